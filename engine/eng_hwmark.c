/*
 * Rollback high-water marks: per index, the highest head version this
 * appliance has seen, fsynced before it is relied on, so a store that
 * serves an older head (a restored backup, a lost tail, a malicious
 * operator) is caught.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cdx_hex.h"
#include "eng_hwmark.h"

/* The line of a deleted index's mark: "deleted <version>". */
#define DELETED "deleted "
/* After the version, once an accept-rollback started a generation (hsm_mark.h): " gen <n>". */
#define GEN     " gen "

static void path_of(const char *dir, const uint8_t id[CDX_ID_LEN], char *out, size_t cap,
                    const char *suffix)
{
    char hx[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, hx);
    snprintf(out, cap, "%s/hw-%s%s", dir, hx, suffix);
}

cdx_err eng_hwmark_get(const char *dir, const uint8_t id[CDX_ID_LEN], hsm_mark *m)
{
    char path[PATH_MAX];
    path_of(dir, id, path, sizeof(path), "");
    memset(m, 0, sizeof(*m));
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT)
            return CDX_OK;
        return cdx_fail(CDX_ERR_CONFIG, "cannot read %s: %s", path, strerror(errno));
    }
    char line[64] = {0};
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    const char *num = line;
    if (ok && !strncmp(line, DELETED, sizeof(DELETED) - 1)) {
        num += sizeof(DELETED) - 1;
        m->deleted = true;
    }
    char *end = NULL;
    unsigned long long v = ok && *num >= '0' && *num <= '9' ? strtoull(num, &end, 10) : 0;
    if (ok && end && end != num && !strncmp(end, GEN, sizeof(GEN) - 1)) {
        const char *g = end + sizeof(GEN) - 1;
        unsigned long gen = *g >= '0' && *g <= '9' ? strtoul(g, &end, 10) : 0;
        if (end == g || gen > UINT32_MAX)
            end = NULL;
        m->gen = (uint32_t)gen;
    }
    if (!ok || !end || end == num || (*end && *end != '\n'))
        return cdx_fail(CDX_ERR_CONFIG,
                        "state file %s is corrupt; restore it or accept the "
                        "store's state explicitly",
                        path);
    m->version = v;
    return CDX_OK;
}

cdx_err eng_hwmark_put(const char *dir, const uint8_t id[CDX_ID_LEN], const hsm_mark *m)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    path_of(dir, id, path, sizeof(path), "");
    path_of(dir, id, tmp, sizeof(tmp), ".tmp");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return cdx_fail(CDX_ERR_CONFIG, "cannot write %s: %s", tmp, strerror(errno));
    char line[64];
    int n = m->gen ? snprintf(line, sizeof(line), "%s%" PRIu64 GEN "%" PRIu32 "\n",
                              m->deleted ? DELETED : "", m->version, m->gen)
                   : snprintf(line, sizeof(line), "%s%" PRIu64 "\n", m->deleted ? DELETED : "",
                              m->version);
    bool ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return cdx_fail(CDX_ERR_CONFIG, "cannot persist %s: %s", path, strerror(errno));
    }
    /* The rename is durable only once the directory is. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return CDX_OK;
}

void eng_hwmark_remove(const char *dir, const uint8_t id[CDX_ID_LEN])
{
    char path[PATH_MAX];
    path_of(dir, id, path, sizeof(path), "");
    unlink(path);
}
