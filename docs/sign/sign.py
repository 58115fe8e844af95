import hashlib, hmac, json
from decimal import Decimal

def _text(v, top):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if top else json.dumps(v, ensure_ascii=False)
    if isinstance(v, (int, Decimal)):  # never float: amounts are exact
        return str(v)
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(_text(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _text(v[k], False) for k in sorted(v)) + "}"
    raise TypeError(f"{type(v).__name__}: use str, int, Decimal, bool, list or dict")

def sign(message: dict, key: str) -> str:
    canonical = "&".join(f"{k}={_text(v, True)}" for k, v in sorted(message.items()) if k != "sign" and v is not None)
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()

if __name__ == "__main__":
    print(sign({"queue_id": "withdraw_123", "from_address": "0x1111111111111111111111111111111111111111",
                "to_address": "0x2222222222222222222222222222222222222222", "amount": Decimal("50.25"),
                "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297}, "test-secret"))
    print(sign({"chain": "ETH", "symbol": "USDT", "address": "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f",
                "timestamp": 1758610297}, "test-secret"))
