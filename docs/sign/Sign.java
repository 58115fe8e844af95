import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.*;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class Sign {
    // Values: String, BigDecimal or Long (exact amounts), Boolean, null, List, Map.
    static String text(Object v, boolean top) {
        if (v instanceof String s) return top ? s : quote(s);
        if (v instanceof BigDecimal d) return d.toPlainString();
        if (v instanceof Long || v instanceof Integer || v instanceof Boolean) return v.toString();
        if (v == null) return "null";
        if (v instanceof List<?> l) {
            StringJoiner j = new StringJoiner(",", "[", "]");
            for (Object e : l) j.add(text(e, false));
            return j.toString();
        }
        if (v instanceof Map<?, ?> m) {
            StringJoiner j = new StringJoiner(",", "{", "}");
            for (Map.Entry<?, ?> e : new TreeMap<>(m).entrySet()) j.add(quote((String) e.getKey()) + ":" + text(e.getValue(), false));
            return j.toString();
        }
        throw new IllegalArgumentException(v.getClass() + ": use String, BigDecimal, Long, Boolean, List or Map");
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                case '\b' -> b.append("\\b");
                case '\f' -> b.append("\\f");
                default -> b.append(c < 0x20 ? String.format("\\u%04x", (int) c) : String.valueOf(c));
            }
        }
        return b.append('"').toString();
    }

    public static String sign(Map<String, Object> message, String key) throws Exception {
        StringJoiner canonical = new StringJoiner("&");
        for (Map.Entry<String, Object> e : new TreeMap<>(message).entrySet())
            if (!e.getKey().equals("sign") && e.getValue() != null) canonical.add(e.getKey() + "=" + text(e.getValue(), true));
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(key.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        return HexFormat.of().formatHex(mac.doFinal(canonical.toString().getBytes(StandardCharsets.UTF_8)));
    }

    public static void main(String[] args) throws Exception {
        System.out.println(sign(Map.of("queue_id", "withdraw_123", "from_address", "0x1111111111111111111111111111111111111111",
            "to_address", "0x2222222222222222222222222222222222222222", "amount", new BigDecimal("50.25"),
            "chain", "ETH", "symbol", "USDT", "timestamp", 1758610297L), "test-secret"));
        System.out.println(sign(Map.of("chain", "ETH", "symbol", "USDT", "address", "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f",
            "timestamp", 1758610297L), "test-secret"));
    }
}
