"""OmniVOX Intake: the support desk's intake and registration daemon."""
