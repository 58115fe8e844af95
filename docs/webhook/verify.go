package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Verify checks a webhook: body is the raw request body, timestamp and signature
// the X-M2Pool-Timestamp and X-M2Pool-Signature headers.
func Verify(body []byte, timestamp, signature, key string, now time.Time, tolerance time.Duration) bool {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return false
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return false // too old (or from the future): a replay
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(timestamp + "."))
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(strings.ToLower(signature)))
}

func main() {
	sig := "8ebfc76a3112a34e93fc2f4d9e277493e113918567f347653ea2f149a33dee21"
	at := time.Unix(1758610297, 0)
	fmt.Println(Verify([]byte(`{"status":1}`), "1758610297", sig, "test-secret", at, 5*time.Minute))
	fmt.Println(Verify([]byte(`{"status":0}`), "1758610297", sig, "test-secret", at, 5*time.Minute))
	fmt.Println(Verify([]byte(`{"status":1}`), "1758610297", sig, "test-secret", at.Add(10*time.Minute), 5*time.Minute))
}
