"""The mail sender: an idempotent consumer of `auth.mail` that sends each code over SMTP (`python -m
auth.mailer`, consumer group `auth-mailer`, settings MAILER_*). See services/auth/README.md."""
