-- Browser sessions of the web pages. The cookie holds a random value; only its SHA-256
-- is stored, so a copy of this table opens no session.
CREATE TABLE web_sessions (
    token_hash  bytea PRIMARY KEY,
    hospital    text NOT NULL,
    -- SHA-256 of the token the reader logged in with: a session ends when its token is
    -- removed from the configuration.
    credential_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
