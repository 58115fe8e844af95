package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Values: string, json.Number (exact amounts), bool, nil, []any, map[string]any.
func text(v any, top bool) string {
	switch x := v.(type) {
	case string:
		if top {
			return x
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(x)
		return strings.TrimSuffix(b.String(), "\n")
	case json.Number:
		return x.String()
	case bool:
		return fmt.Sprint(x)
	case nil:
		return "null"
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = text(e, false)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = text(k, false) + ":" + text(x[k], false)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	panic(fmt.Sprintf("%T: use string, json.Number, bool, []any or map[string]any", v))
}

func Sign(message map[string]any, key string) string {
	keys := make([]string, 0, len(message))
	for k, v := range message {
		if k != "sign" && v != nil {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + text(message[k], true)
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(strings.Join(parts, "&")))
	return hex.EncodeToString(mac.Sum(nil))
}

func main() {
	fmt.Println(Sign(map[string]any{"queue_id": "withdraw_123", "from_address": "0x1111111111111111111111111111111111111111",
		"to_address": "0x2222222222222222222222222222222222222222", "amount": json.Number("50.25"),
		"chain": "ETH", "symbol": "USDT", "timestamp": json.Number("1758610297")}, "test-secret"))
	fmt.Println(Sign(map[string]any{"chain": "ETH", "symbol": "USDT", "address": "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f",
		"timestamp": json.Number("1758610297")}, "test-secret"))
}
