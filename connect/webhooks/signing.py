"""The delivery signature: ``X-Rewards-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``,
one ``v1`` per secret that signs now (two during a secret's rotation grace)."""

import hashlib
import hmac

SIGNATURE_HEADER = "X-Rewards-Signature"
DELIVERY_HEADER = "X-Rewards-Delivery"


def signature(*, secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(*, secrets: list[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={signature(secret=s, timestamp=timestamp, body=body)}" for s in secrets)])
