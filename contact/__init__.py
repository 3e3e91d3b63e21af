"""Contact messages: form, store, SMTP forwarding and CLI."""
