/* RFC 9180 HPKE, base mode, DHKEM(P-256, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, CNG only.
 *
 * Shared with pcns' receiver (vault/hook_seal.py); the contract is windows/README.md:
 *   sealed = enc (65 bytes, 04 || X || Y) || AES-GCM ciphertext || tag (16 bytes)
 *   info   = "pcns-seal-v1" || u32be(len) source || u32be(len) webhook_id
 *                           || u32be(len) user || u32be(len) key_id
 *
 * No CRT: usable from pcnsflt.dll and from the executables. Every function returns an NTSTATUS:
 * 0 on success, a CNG status, or one of the PCNS_STATUS_* values below. Secrets (the ephemeral
 * key, the shared secret, every derived key) are zeroed before return, on every path.
 * Thread-safe: no state outside the call.
 */
#ifndef PCNS_SEAL_H
#define PCNS_SEAL_H

#include <windows.h>
#include <bcrypt.h>

#ifndef PCNS_BYTES_DEFINED
#define PCNS_BYTES_DEFINED
/* A counted byte string (not NUL-terminated). */
typedef struct pcns_bytes {
    const BYTE *data;
    ULONG len;
} pcns_bytes;
#endif

#define PCNS_P256_POINT_LEN 65 /* 04 || X || Y */
#define PCNS_P256_SCALAR_LEN 32
#define PCNS_SEAL_ENC_LEN 65
#define PCNS_SEAL_TAG_LEN 16
#define PCNS_SEAL_OVERHEAD (PCNS_SEAL_ENC_LEN + PCNS_SEAL_TAG_LEN)
#define PCNS_SEAL_INFO_TAG "pcns-seal-v1"
#define PCNS_SEAL_INFO_TAG_LEN 12
/* Bytes of `info` for four strings of these lengths (callers check the sum does not wrap). */
#define PCNS_SEAL_INFO_LEN(s, w, u, k) (PCNS_SEAL_INFO_TAG_LEN + 16 + (s) + (w) + (u) + (k))

#define PCNS_STATUS_OK ((NTSTATUS)0x00000000L)
#define PCNS_STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000DL)
#define PCNS_STATUS_BUFFER_TOO_SMALL ((NTSTATUS)0xC0000023L)
/* The recipient (or given ephemeral) point is not an uncompressed point on P-256. */
#define PCNS_STATUS_NOT_ON_CURVE ((NTSTATUS)0xE0CF0001L)
/* CNG answered with a size or blob this code did not expect. */
#define PCNS_STATUS_CNG_OUTPUT ((NTSTATUS)0xE0CF0002L)

/* PCNS_STATUS_OK when `point` is 04 || X || Y with X, Y < p and Y^2 = X^3 - 3X + b (mod p),
 * PCNS_STATUS_NOT_ON_CURVE otherwise. (Windows' CNG checks this on import; Wine's does not.) */
NTSTATUS pcns_p256_check_point(const BYTE point[PCNS_P256_POINT_LEN]);

/* Build `info` as README.md says into `out`; `*out_len` gets its length. */
NTSTATUS pcns_seal_info(pcns_bytes source, pcns_bytes webhook_id, pcns_bytes user,
                        pcns_bytes key_id, BYTE *out, ULONG out_cap, ULONG *out_len);

/* Seal `pt` to the recipient point `pk_r` with `info` and an empty aad, with a fresh ephemeral
 * key. `out` needs pt_len + PCNS_SEAL_OVERHEAD bytes; `*out_len` gets that. */
NTSTATUS pcns_seal(const BYTE pk_r[PCNS_P256_POINT_LEN], const BYTE *info, ULONG info_len,
                   const BYTE *pt, ULONG pt_len, BYTE *out, ULONG out_cap, ULONG *out_len);

/* For the RFC 9180 test vectors only (tests/hpke_vectors.exe): the same seal with the given
 * ephemeral key (skEm and its public point pkEm) and aad, so the output is deterministic.
 * Never use it to seal a real password. */
NTSTATUS pcns_seal_with_ephemeral(const BYTE sk_e[PCNS_P256_SCALAR_LEN],
                                  const BYTE pk_e[PCNS_P256_POINT_LEN],
                                  const BYTE pk_r[PCNS_P256_POINT_LEN], const BYTE *info,
                                  ULONG info_len, const BYTE *aad, ULONG aad_len, const BYTE *pt,
                                  ULONG pt_len, BYTE *out, ULONG out_cap, ULONG *out_len);

#endif
