/*
 * Locked arena for secrets. Why one arena of small slots instead of a page
 * per secret (libsodium style): subkeys are 32 bytes and a cache may hold
 * thousands; a page each would exhaust RLIMIT_MEMLOCK for nothing. Guard
 * pages on both sides still catch linear overruns out of the arena.
 */
#include "hsm_secmem.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cdx_limits.h"
#include "cdx_log.h"

#define SLOT 64u

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned refs;
static uint8_t *region;   /* guard | arena | guard */
static size_t region_len;
static uint8_t *arena;
static size_t nslots;
static uint8_t *used;     /* per slot: 0 free, 1 start of allocation, 2 continuation */
static size_t in_use;
static bool locked;

cdx_err hsm_secmem_init(size_t bytes, bool allow_unlocked)
{
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&mu);
    if (refs > 0) {
        refs++;
        goto out;
    }
    if (bytes == 0)
        bytes = CDX_SECMEM_DEFAULT;
    if (bytes > CDX_SECMEM_MAX) {
        err = cdx_fail(CDX_ERR_CONFIG, "secmem_bytes %zu exceeds the maximum %u", bytes,
                       (unsigned)CDX_SECMEM_MAX);
        goto out;
    }
    /* No core dumps, no ptrace attach by other uids: secrets live in this process. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        err = cdx_fail(CDX_ERR_INTERNAL, "prctl(PR_SET_DUMPABLE, 0) failed");
        goto out;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t alen = (bytes + page - 1) / page * page;
    region_len = alen + 2 * page;
    void *m = mmap(NULL, region_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot map %zu bytes for secrets", region_len);
        goto out;
    }
    region = m;
    arena = region + page;
    if (mprotect(arena, alen, PROT_READ | PROT_WRITE) != 0) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "mprotect of the secret arena failed");
        goto unmap;
    }
    (void)madvise(arena, alen, MADV_DONTDUMP);
    (void)madvise(arena, alen, MADV_DONTFORK);
    /* The raw syscall: ASan's mlock interceptor pretends to succeed without locking. */
    locked = syscall(SYS_mlock, arena, alen) == 0;
    if (!locked) {
        if (!allow_unlocked) {
            err = cdx_fail(CDX_ERR_MEMLOCK,
                           "cannot lock %zu bytes of memory for secrets (RLIMIT_MEMLOCK too "
                           "small?): raise LimitMEMLOCK / ulimit -l, or set "
                           "allow_unlocked_memory = yes to run with secrets that may be swapped",
                           alen);
            goto unmap;
        }
        cdx_log(CDX_LOG_WARN, "secmem_unlocked",
                "bytes=%zu msg=\"SECRETS ARE NOT LOCKED IN MEMORY and may reach swap "
                "(allow_unlocked_memory=yes)\"",
                alen);
    }
    nslots = alen / SLOT;
    used = calloc(nslots, 1);
    if (!used) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto unmap;
    }
    in_use = 0;
    refs = 1;
    goto out;
unmap:
    munmap(region, region_len);
    region = arena = NULL;
out:
    pthread_mutex_unlock(&mu);
    return err;
}

void hsm_secmem_shutdown(void)
{
    pthread_mutex_lock(&mu);
    if (refs == 0 || --refs > 0)
        goto out;
    OPENSSL_cleanse(arena, nslots * SLOT);
    if (locked)
        (void)syscall(SYS_munlock, arena, nslots * SLOT);
    munmap(region, region_len);
    free(used);
    used = NULL;
    region = arena = NULL;
    nslots = in_use = 0;
out:
    pthread_mutex_unlock(&mu);
}

bool hsm_secmem_locked(void)
{
    pthread_mutex_lock(&mu);
    bool l = refs > 0 && locked;
    pthread_mutex_unlock(&mu);
    return l;
}

void *hsm_secmem_alloc(size_t n)
{
    void *p = NULL;
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX - SLOT) /* the slot count below would wrap to 0 */
        return NULL;
    size_t need = (n + SLOT - 1) / SLOT;
    pthread_mutex_lock(&mu);
    if (refs == 0)
        goto out;
    /* First fit: secrets are few and small, a linear scan is plenty. */
    for (size_t i = 0; i + need <= nslots;) {
        size_t j = 0;
        while (j < need && used[i + j] == 0)
            j++;
        if (j == need) {
            used[i] = 1;
            for (size_t k = 1; k < need; k++)
                used[i + k] = 2;
            in_use += need;
            p = arena + i * SLOT;
            memset(p, 0, need * SLOT);
            break;
        }
        i += j + 1;
    }
out:
    pthread_mutex_unlock(&mu);
    return p;
}

void hsm_secmem_free(void *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&mu);
    uint8_t *b = p;
    if (refs == 0 || b < arena || b >= arena + nslots * SLOT || (size_t)(b - arena) % SLOT) {
        /* Not ours: a programming error; refuse rather than corrupt the map. */
        cdx_log(CDX_LOG_ERROR, "secmem_bad_free", "msg=\"pointer not from the secret arena\"");
        goto out;
    }
    size_t i = (size_t)(b - arena) / SLOT;
    if (used[i] != 1)
        goto out;
    size_t k = i;
    do {
        OPENSSL_cleanse(arena + k * SLOT, SLOT);
        used[k] = 0;
        in_use--;
        k++;
    } while (k < nslots && used[k] == 2);
out:
    pthread_mutex_unlock(&mu);
}

void hsm_secmem_usage(size_t *u, size_t *cap)
{
    pthread_mutex_lock(&mu);
    if (u)
        *u = in_use * SLOT;
    if (cap)
        *cap = nslots * SLOT;
    pthread_mutex_unlock(&mu);
}

int hsm_secmem_read_fd(int fd, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (max > SIZE_MAX - 2)
        return ENOMEM;
    char *buf = hsm_secmem_alloc(max + 2);
    if (!buf)
        return ENOMEM;
    size_t n = 0;
    for (;;) {
        /* Ask for one byte more than allowed to tell "exactly max" from "too long". */
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            hsm_secmem_free(buf);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            hsm_secmem_free(buf);
            return E2BIG;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}
