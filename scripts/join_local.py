"""Prints how to join the local demo: a user token whose room dispatches our agent on join."""

from __future__ import annotations

import argparse
import secrets

from web.token import user_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:7880")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--agent-name", default="avatar-agent")
    parser.add_argument("--room", default=f"avatar-demo-{secrets.token_hex(3)}")
    args = parser.parse_args()
    token = user_token(
        api_key=args.api_key,
        api_secret=args.api_secret,
        room=args.room,
        agent_name=args.agent_name,
        identity="you",
    )
    print(
        f"""
Join room {args.room!r} (the agent and its avatar are dispatched when you join):

  LiveKit Agents Playground: https://agents-playground.livekit.io -> "Manual" connection,
    URL:   {args.url}
    Token: {token}

  or the lk CLI:  lk room join --url {args.url} --token {token} --publish-demo
"""
    )


if __name__ == "__main__":
    main()
