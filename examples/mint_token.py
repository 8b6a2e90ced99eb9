"""Print a demo JWT that examples/registry.yaml accepts.

    .venv/bin/python examples/mint_token.py --sub alice --roles reader
    .venv/bin/python examples/mint_token.py --sub bob --roles admin --ttl 600

Signed RS256 with examples/keys/demo-private-key.pem (DEMO ONLY - that key is
public). Use it as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jwt

HERE = Path(__file__).resolve().parent
DEFAULT_KEY = HERE / "keys" / "demo-private-key.pem"
DEFAULT_KID = "meshgate-demo-rsa"
DEFAULT_ISSUER = "https://idp.meshgate.example"
DEFAULT_AUDIENCE = "meshgate"


def mint(
    sub: str,
    roles: list[str],
    *,
    ttl: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    key_path: Path = DEFAULT_KEY,
    kid: str = DEFAULT_KID,
) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": sub, "roles": roles, "iat": now, "nbf": now, "exp": now + ttl}
    return jwt.encode(claims, key_path.read_bytes(), algorithm="RS256", headers={"kid": kid})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sub", default="alice", help="consumer id (default: alice)")
    parser.add_argument("--roles", default="reader", help="comma-separated roles (default: reader)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    parser.add_argument("--iss", default=DEFAULT_ISSUER, help=f"issuer (default: {DEFAULT_ISSUER})")
    parser.add_argument("--aud", default=DEFAULT_AUDIENCE, help=f"audience (default: {DEFAULT_AUDIENCE})")
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY, help="PEM private key (default: the demo key)")
    parser.add_argument("--kid", default=DEFAULT_KID, help=f"JWT header kid (default: {DEFAULT_KID})")
    args = parser.parse_args()
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    print(mint(args.sub, roles, ttl=args.ttl, issuer=args.iss, audience=args.aud, key_path=args.key, kid=args.kid))


if __name__ == "__main__":
    main()
