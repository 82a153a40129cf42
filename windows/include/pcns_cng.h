/* pcns_cng.h: CNG algorithm handles opened once per process and shared by every thread.
 *
 * BCryptOpenAlgorithmProvider is the costly part of a CNG operation (Microsoft advises caching
 * its handles); an algorithm handle may be used by many threads at once once its properties are
 * set. Each handle is opened on first use (never in DllMain), published with an interlocked
 * compare-exchange (a thread that lost the race closes its own), and kept for the life of the
 * process: LSASS never unloads a notification package. No CRT.
 */
#ifndef PCNS_CNG_H
#define PCNS_CNG_H

#include <windows.h>
#include <bcrypt.h>

typedef enum {
    PCNS_ALG_ECDH_P256,
    PCNS_ALG_HMAC_SHA256,
    PCNS_ALG_AES_GCM, /* AES with BCRYPT_CHAINING_MODE = GCM */
    PCNS_ALG_SHA256,
    PCNS_ALG_COUNT
} pcns_alg_id;

/* The shared handle of `id` in *alg; an NTSTATUS failure leaves *alg NULL. */
NTSTATUS pcns_alg(pcns_alg_id id, BCRYPT_ALG_HANDLE *alg);

/* SHA-256 of `len` bytes at `data` into `out` (32 bytes), with the shared handle. */
NTSTATUS pcns_sha256(const BYTE *data, ULONG len, BYTE out[32]);

#endif
