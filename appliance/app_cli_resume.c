/*
 * The progress file of `cipherdex upsert` (see app_cli.h and docs/CLI.md,
 * "Failed uploads and --resume"): a few text lines saying how many rows of
 * an input file were committed in order from its first row, and a SHA-256
 * of those rows as they were sent, so that --resume can skip exactly them
 * and refuses when they changed.
 *
 *   cipherdex upsert progress 1
 *   index docs
 *   input /data/items.jsonl
 *   rows 2000
 *   through line 2001
 *   sha256 9f86d0...
 *   version 17
 *
 * Written to PATH.tmp, flushed to disk, then renamed over PATH, so a crash
 * leaves the old record or the new one.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app_cli.h"
#include "cdx_hex.h"
#include "cdx_limits.h"

#define MAGIC "cipherdex upsert progress 1"

int cli_resume_read(const char *path, cli_resume_rec *r)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 1;
        fprintf(stderr, "cipherdex: progress file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[CDX_CLI_PROGRESS_MAX + 1];
    size_t n = fread(buf, 1, CDX_CLI_PROGRESS_MAX + 1, f);
    fclose(f);
    memset(r, 0, sizeof(*r));
    if (n > CDX_CLI_PROGRESS_MAX) {
        fprintf(stderr, "cipherdex: progress file %s: larger than %d bytes: not one of ours\n",
                path, CDX_CLI_PROGRESS_MAX);
        return -1;
    }
    buf[n] = '\0';
    unsigned seen = 0;
    char *save = NULL;
    char *line = strtok_r(buf, "\n", &save);
    if (!line || strcmp(line, MAGIC)) {
        fprintf(stderr, "cipherdex: progress file %s: does not start with \"%s\"\n", path, MAGIC);
        return -1;
    }
    while ((line = strtok_r(NULL, "\n", &save))) {
        char *v = strchr(line, ' ');
        if (!v)
            continue;
        *v++ = '\0';
        if (!strcmp(line, "index") && strlen(v) <= CDX_INDEX_NAME_MAX) {
            strcpy(r->index, v);
            seen |= 1;
        } else if (!strcmp(line, "rows") && cdx_parse_u64(v, &r->rows)) {
            seen |= 2;
        } else if (!strcmp(line, "through") && strlen(v) < sizeof(r->through)) {
            strcpy(r->through, v);
        } else if (!strcmp(line, "sha256") && strlen(v) == 64 &&
                   !cdx_hex_decode(v, r->sha256, sizeof(r->sha256))) {
            seen |= 4;
        } else if (!strcmp(line, "version")) {
            (void)cdx_parse_u64(v, &r->version);
        }
    }
    if (seen != 7) {
        fprintf(stderr, "cipherdex: progress file %s: incomplete (needs index, rows, sha256)\n",
                path);
        return -1;
    }
    return 0;
}

int cli_resume_write(const char *path, const char *input, const cli_resume_rec *r)
{
    char tmp[4096], hex[65];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    cdx_hex_encode(r->sha256, sizeof(r->sha256), hex);
    fprintf(
        f, "%s\nindex %s\ninput %s\nrows %" PRIu64 "\nthrough %s\nsha256 %s\nversion %" PRIu64 "\n",
        MAGIC, r->index, input, r->rows, r->through, hex, r->version);
    int rc = fflush(f) || ferror(f) || fsync(fileno(f)) ? -1 : 0;
    int saved = errno;
    if (fclose(f) && !rc) {
        rc = -1;
        saved = errno;
    }
    if (!rc && rename(tmp, path)) {
        rc = -1;
        saved = errno;
    }
    if (rc)
        unlink(tmp);
    errno = saved;
    return rc;
}
