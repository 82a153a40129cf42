/* CNG algorithm handles, opened once and shared (include/pcns_cng.h). No CRT. */
#include "pcns_cng.h"

#ifndef BCRYPT_ECDH_P256_ALGORITHM
#define BCRYPT_ECDH_P256_ALGORITHM L"ECDH_P256"
#endif

static BCRYPT_ALG_HANDLE volatile handles[PCNS_ALG_COUNT];

static NTSTATUS open_alg(pcns_alg_id id, BCRYPT_ALG_HANDLE *alg)
{
    NTSTATUS st;

    switch (id) {
    case PCNS_ALG_ECDH_P256:
        return BCryptOpenAlgorithmProvider(alg, BCRYPT_ECDH_P256_ALGORITHM, NULL, 0);
    case PCNS_ALG_HMAC_SHA256:
        return BCryptOpenAlgorithmProvider(alg, BCRYPT_SHA256_ALGORITHM, NULL,
                                           BCRYPT_ALG_HANDLE_HMAC_FLAG);
    case PCNS_ALG_SHA256:
        return BCryptOpenAlgorithmProvider(alg, BCRYPT_SHA256_ALGORITHM, NULL, 0);
    case PCNS_ALG_AES_GCM:
        st = BCryptOpenAlgorithmProvider(alg, BCRYPT_AES_ALGORITHM, NULL, 0);
        if (!BCRYPT_SUCCESS(st))
            return st;
        /* Set before the handle is shared: properties are the one thing threads must not race. */
        st = BCryptSetProperty(*alg, BCRYPT_CHAINING_MODE, (PUCHAR)BCRYPT_CHAIN_MODE_GCM,
                               sizeof(BCRYPT_CHAIN_MODE_GCM), 0);
        if (!BCRYPT_SUCCESS(st)) {
            BCryptCloseAlgorithmProvider(*alg, 0);
            *alg = NULL;
        }
        return st;
    case PCNS_ALG_COUNT:
        break;
    }
    return (NTSTATUS)0xC000000DL; /* STATUS_INVALID_PARAMETER */
}

NTSTATUS pcns_alg(pcns_alg_id id, BCRYPT_ALG_HANDLE *alg)
{
    BCRYPT_ALG_HANDLE mine = NULL, theirs;
    NTSTATUS st;

    *alg = NULL;
    if ((unsigned)id >= PCNS_ALG_COUNT)
        return (NTSTATUS)0xC000000DL;
    theirs = InterlockedCompareExchangePointer((PVOID volatile *)&handles[id], NULL, NULL);
    if (theirs != NULL) {
        *alg = theirs;
        return 0;
    }
    st = open_alg(id, &mine);
    if (!BCRYPT_SUCCESS(st))
        return st;
    theirs = InterlockedCompareExchangePointer((PVOID volatile *)&handles[id], mine, NULL);
    if (theirs != NULL) {
        BCryptCloseAlgorithmProvider(mine, 0); /* another thread published first */
        mine = theirs;
    }
    *alg = mine;
    return 0;
}

NTSTATUS pcns_sha256(const BYTE *data, ULONG len, BYTE out[32])
{
    BCRYPT_ALG_HANDLE alg = NULL;
    BCRYPT_HASH_HANDLE h = NULL;
    NTSTATUS st;

    st = pcns_alg(PCNS_ALG_SHA256, &alg);
    if (!BCRYPT_SUCCESS(st))
        return st;
    st = BCryptCreateHash(alg, &h, NULL, 0, NULL, 0, 0);
    if (!BCRYPT_SUCCESS(st))
        return st;
    if (len != 0)
        st = BCryptHashData(h, (PUCHAR)data, len, 0);
    if (BCRYPT_SUCCESS(st))
        st = BCryptFinishHash(h, out, 32, 0);
    BCryptDestroyHash(h);
    return st;
}
