"""Chat platforms (Telegram, Discord, Teams): conversations mapped to sessions, and replies."""
