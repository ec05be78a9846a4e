"""Outbox consumers: email to customers, Telegram to staff."""
