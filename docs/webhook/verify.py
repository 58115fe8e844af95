import hashlib, hmac, time

def verify(body: bytes, timestamp: str, signature: str, key: str, now=None, tolerance=300) -> bool:
    """body: the raw request body; timestamp, signature: the X-M2Pool-Timestamp and X-M2Pool-Signature headers."""
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, signature.lower())

if __name__ == "__main__":
    sig = "8ebfc76a3112a34e93fc2f4d9e277493e113918567f347653ea2f149a33dee21"
    for ok in (verify(b'{"status":1}', "1758610297", sig, "test-secret", now=1758610297),
               verify(b'{"status":0}', "1758610297", sig, "test-secret", now=1758610297),
               verify(b'{"status":1}', "1758610297", sig, "test-secret", now=1758610297 + 600)):
        print("true" if ok else "false")
