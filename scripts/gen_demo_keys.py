"""Generate the DEMO signing key pair for examples/ (run once; output is committed).

    .venv/bin/python scripts/gen_demo_keys.py [--force]

Writes examples/keys/demo-private-key.pem (RSA 2048, PKCS#8, unencrypted) and
examples/keys/jwks.json (its public half, kid "meshgate-demo-rsa"). The private
key is public knowledge once committed: it exists so `make run` works offline
and must never sign anything that matters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

KEYS = Path(__file__).resolve().parent.parent / "examples" / "keys"
KID = "meshgate-demo-rsa"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    args = parser.parse_args()
    pem_path = KEYS / "demo-private-key.pem"
    jwks_path = KEYS / "jwks.json"
    if pem_path.exists() and not args.force:
        print(f"{pem_path} exists; pass --force to replace it", file=sys.stderr)
        return 1
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.pop("key_ops", None)  # RFC 7517 4.3: "use" and "key_ops" should not both appear
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    KEYS.mkdir(parents=True, exist_ok=True)
    pem_path.write_bytes(pem)
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {pem_path} and {jwks_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
