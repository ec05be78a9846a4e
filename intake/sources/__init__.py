"""Inbound channels: one module per source (IMAP, SMTP, webhooks, operator API)."""
