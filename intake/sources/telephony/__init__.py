"""Telephony: PBX and VoIP providers' call events, one adapter module per provider."""
