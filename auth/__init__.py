"""Who is asking: accounts, sign-in (local and OpenID Connect), roles and the policy
table, API tokens."""
