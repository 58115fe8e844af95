import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.HexFormat;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class Verify {
    /** body: the raw request body; timestamp, signature: the X-M2Pool-Timestamp and X-M2Pool-Signature headers. */
    public static boolean verify(byte[] body, String timestamp, String signature, String key, long nowSecs, long toleranceSecs) throws Exception {
        long ts;
        try { ts = Long.parseLong(timestamp); } catch (NumberFormatException e) { return false; }
        if (Math.abs(nowSecs - ts) > toleranceSecs) return false; // too old (or from the future): a replay
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(key.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        mac.update((timestamp + ".").getBytes(StandardCharsets.UTF_8));
        byte[] want = HexFormat.of().formatHex(mac.doFinal(body)).getBytes(StandardCharsets.UTF_8);
        return MessageDigest.isEqual(want, signature.toLowerCase().getBytes(StandardCharsets.UTF_8));
    }

    public static void main(String[] args) throws Exception {
        String sig = "8ebfc76a3112a34e93fc2f4d9e277493e113918567f347653ea2f149a33dee21";
        byte[] ok = "{\"status\":1}".getBytes(StandardCharsets.UTF_8), forged = "{\"status\":0}".getBytes(StandardCharsets.UTF_8);
        System.out.println(verify(ok, "1758610297", sig, "test-secret", 1758610297L, 300));
        System.out.println(verify(forged, "1758610297", sig, "test-secret", 1758610297L, 300));
        System.out.println(verify(ok, "1758610297", sig, "test-secret", 1758610297L + 600, 300));
    }
}
