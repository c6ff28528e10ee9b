// Verifies a Mosaic signature (docs/cryptography.md of mosaic-spec): Ed25519ph, the
// pre-hash being BLAKE3 with 64 bytes of output instead of SHA-512, context "Mosaic".
// Built from @noble/curves' own ed25519ph with only the pre-hash swapped, so it shares no
// code with the gateway (ed25519-dalek, blake3). Prints "valid" or "invalid".
//
// usage: node verify.mjs PUBLIC_KEY_HEX MESSAGE_HEX SIGNATURE_BASE64
import { ed25519ph } from '@noble/curves/ed25519';
import { twistedEdwards } from '@noble/curves/abstract/edwards';
import { blake3 } from '@noble/hashes/blake3';

const mosaic = twistedEdwards({
  ...ed25519ph.CURVE,
  prehash: (m) => blake3(m, { dkLen: 64 }),
});
const [pub, msg, sig] = process.argv.slice(2);
let ok = false;
try {
  ok = mosaic.verify(
    Buffer.from(sig, 'base64'),
    Buffer.from(msg, 'hex'),
    Buffer.from(pub, 'hex'),
    { context: Buffer.from('Mosaic'), zip215: false },
  );
} catch (e) {
  ok = false;
}
console.log(ok ? 'valid' : 'invalid');
