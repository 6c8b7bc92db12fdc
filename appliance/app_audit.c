/* The audit trail's writer (see app_audit.h). */
#include "app_audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cdx_log.h"
#include "cdx_time.h"

#define ROTATED_PREFIX "audit-"
#define ROTATED_SUFFIX ".log"
#define PATH_CAP       4096

struct app_audit {
    app_audit_config cfg;
    char dir[PATH_CAP], path[PATH_CAP + 32];
    pthread_mutex_t mu;
    pthread_cond_t synced_cv, timer_cv;
    int fd; /* -1: closed (failed, or between files) */
    dev_t dev;
    ino_t ino;
    uint64_t size;      /* of the current file */
    uint64_t first_seq; /* the current file's first record (0: none yet) */
    pol_audit_pos pos;  /* the chain's head */
    uint64_t synced_seq;
    bool syncing;
    app_audit_state state;
    char error[160];
    int64_t failed_at_ms;  /* monotonic, when the trail failed */
    uint64_t lost_pending; /* fail-open: records dropped since the trail last worked */
    uint64_t records, lost, failures, syncs;
    int64_t last_checkpoint_ms;
    bool stop, timer_started;
    pthread_t timer;
};

const char *app_audit_state_name(app_audit_state s)
{
    return s == APP_AUDIT_OK ? "ok" : s == APP_AUDIT_FAILED ? "failed" : "failed-open";
}

static bool plain(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '/' || c == '@' || c == '+' || c == '-';
}

void app_audit_value(char *out, size_t cap, const char *in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (cap == 0)
        return;
    for (const unsigned char *s = (const unsigned char *)(in ? in : ""); *s; s++) {
        size_t need = plain(*s) ? 1 : 3;
        if (o + need + 4 > cap) { /* room for "..." and the NUL */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (need == 1) {
            out[o++] = (char)*s;
        } else {
            out[o++] = '%';
            out[o++] = hex[*s >> 4];
            out[o++] = hex[*s & 15];
        }
    }
    if (o == 0 && cap > 1)
        out[o++] = '-';
    out[o] = '\0';
}

/* Record the failure (the caller holds mu); the log hears of a change of state only. */
static cdx_err fail_locked(app_audit *a, const char *what, int errnum)
{
    char why[sizeof(a->error)];
    snprintf(why, sizeof(why), "%s: %s", what, strerror(errnum));
    a->failures++;
    if (a->state == APP_AUDIT_OK) {
        a->state = a->cfg.fail_open ? APP_AUDIT_FAILED_OPEN : APP_AUDIT_FAILED;
        a->failed_at_ms = cdx_mono_ms();
        cdx_log(CDX_LOG_ERROR, "audit_failed", "dir=\"%s\" mode=%s msg=\"%s\"", a->dir,
                a->cfg.fail_open ? "fail-open (records are lost; requests go on)"
                                 : "fail-closed (requests are refused)",
                why);
    }
    snprintf(a->error, sizeof(a->error), "%s", why);
    return cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "the audit trail cannot be written (%s)", why);
}

static uint64_t first_seq_of(const char *buf, size_t n)
{
    pol_audit_pos before;
    const char *nl = memchr(buf, '\n', n);
    if (!nl || pol_audit_line_head(buf, (size_t)(nl - buf), &before))
        return 0;
    return before.seq + 1;
}

/*
 * Open (create) the current file for appending; the caller holds mu or is
 * alone. Sets fd, dev, ino, size, first_seq.
 */
static cdx_err open_current(app_audit *a)
{
    int fd = open(a->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return fail_locked(a, "open audit.log", errno);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = errno ? errno : EINVAL;
        close(fd);
        return fail_locked(a, "audit.log is not a regular file", e);
    }
    char head[128];
    ssize_t n = st.st_size ? pread(fd, head, sizeof(head), 0) : 0;
    a->fd = fd;
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    a->size = (uint64_t)st.st_size;
    a->first_seq = n > 0 ? first_seq_of(head, (size_t)n) : 0;
    return CDX_OK;
}

static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

/* The full file becomes audit-SEQ.log; the chain goes on in a new audit.log. */
static cdx_err rotate_locked(app_audit *a)
{
    if (fdatasync(a->fd) != 0)
        return fail_locked(a, "fdatasync before rotation", errno);
    a->syncs++;
    a->synced_seq = a->pos.seq;
    char to[PATH_CAP + 64];
    snprintf(to, sizeof(to), "%s/" ROTATED_PREFIX "%020llu" ROTATED_SUFFIX, a->dir,
             (unsigned long long)a->first_seq);
    close(a->fd);
    a->fd = -1;
    if (rename(a->path, to) != 0)
        return fail_locked(a, "rotate audit.log", errno);
    cdx_err err = open_current(a);
    sync_dir(a->dir);
    if (!err)
        cdx_log(CDX_LOG_INFO, "audit_rotated", "to=\"%s\" next_seq=%llu", to,
                (unsigned long long)(a->pos.seq + 1));
    return err;
}

/* Write one record now (the caller holds mu). On failure nothing moves: the chain stays. */
static cdx_err append_locked(app_audit *a, const char *body)
{
    if (a->fd < 0) {
        cdx_err err = open_current(a);
        if (err)
            return err;
    }
    char line[POL_AUDIT_LINE_MAX + 1];
    size_t len;
    pol_audit_pos next = a->pos;
    cdx_err err = pol_audit_append(&next, cdx_wall_ms(), body, a->cfg.mac, a->cfg.mac_arg, line,
                                   sizeof(line), &len);
    if (err)
        return err;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(a->fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            /* A torn line would break the chain for every later record: cut it off. */
            if (off && ftruncate(a->fd, (off_t)a->size) != 0) {
                close(a->fd);
                a->fd = -1;
            }
            return fail_locked(a, "write audit.log", e);
        }
        off += (size_t)w;
    }
    if (!a->first_seq)
        a->first_seq = next.seq;
    a->pos = next;
    a->size += len;
    a->records++;
    if (a->cfg.syslog)
        syslog(LOG_INFO, "%.*s", (int)(len - 1), line);
    if (a->cfg.rotate_bytes && a->size >= a->cfg.rotate_bytes)
        (void)rotate_locked(a); /* a failure is the trail's state now; this record is written */
    return CDX_OK;
}

/*
 * Write `body` (NULL: none). After a failure the first record written says
 * so: how long the trail was down, how many records were lost (fail open),
 * and why; only then is the trail ok again.
 */
static cdx_err write_locked(app_audit *a, const char *body)
{
    cdx_err err = CDX_OK;
    if (a->state != APP_AUDIT_OK || a->lost_pending) {
        char resume[320], why[200];
        app_audit_value(why, sizeof(why), a->error[0] ? a->error : "-");
        snprintf(resume, sizeof(resume), "kind=resume failed_ms=%lld lost=%llu error=%s",
                 (long long)(cdx_mono_ms() - a->failed_at_ms), (unsigned long long)a->lost_pending,
                 why);
        if ((err = append_locked(a, resume)))
            return err;
        cdx_log(CDX_LOG_INFO, "audit_resumed", "dir=\"%s\" after_ms=%lld lost=%llu", a->dir,
                (long long)(cdx_mono_ms() - a->failed_at_ms), (unsigned long long)a->lost_pending);
        a->lost_pending = 0;
        a->state = APP_AUDIT_OK;
        a->error[0] = '\0';
    }
    return body ? append_locked(a, body) : CDX_OK;
}

/* fdatasync everything written so far, outside mu (the caller holds it; it is held again after). */
static cdx_err sync_locked(app_audit *a)
{
    uint64_t target = a->pos.seq;
    int fd = a->fd >= 0 ? dup(a->fd) : -1; /* rotation may close a->fd meanwhile */
    if (fd < 0)
        return a->fd < 0 ? CDX_OK : fail_locked(a, "dup for fdatasync", errno);
    a->syncing = true;
    pthread_mutex_unlock(&a->mu);
    int rc = fdatasync(fd), e = errno;
    close(fd);
    pthread_mutex_lock(&a->mu);
    a->syncing = false;
    a->syncs++;
    pthread_cond_broadcast(&a->synced_cv);
    if (rc != 0)
        return fail_locked(a, "fdatasync audit.log", e);
    if (target > a->synced_seq)
        a->synced_seq = target;
    return CDX_OK;
}

cdx_err app_audit_check(app_audit *a)
{
    if (!a)
        return CDX_OK;
    pthread_mutex_lock(&a->mu);
    cdx_err err = CDX_OK;
    if (a->state == APP_AUDIT_FAILED)
        err = cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE,
                       "the audit trail cannot be written (%s); requests are refused until it "
                       "can (docs/AUDIT.md)",
                       a->error);
    pthread_mutex_unlock(&a->mu);
    return err;
}

cdx_err app_audit_write(app_audit *a, const char *body)
{
    if (!a)
        return CDX_OK;
    pthread_mutex_lock(&a->mu);
    cdx_err err = write_locked(a, body);
    if (err == CDX_ERR_AUDIT_UNAVAILABLE && a->cfg.fail_open) {
        a->lost++;
        a->lost_pending++;
        err = CDX_OK;
    } else if (!err && a->cfg.sync == APP_AUDIT_SYNC_ALWAYS) {
        /* Group commit: one fdatasync covers every record written before it started. */
        uint64_t mine = a->pos.seq;
        while (!err && a->synced_seq < mine) {
            if (a->syncing)
                pthread_cond_wait(&a->synced_cv, &a->mu);
            else
                err = sync_locked(a);
        }
        if (err == CDX_ERR_AUDIT_UNAVAILABLE && a->cfg.fail_open)
            err = CDX_OK; /* written, its durability unknown: announced like a loss */
    }
    pthread_mutex_unlock(&a->mu);
    return err;
}

/* The file was removed or replaced under us? Then the chain goes on in a new file. */
static void check_file_locked(app_audit *a)
{
    struct stat st;
    if (a->fd < 0)
        return;
    bool gone = stat(a->path, &st) != 0;
    if (!gone && st.st_dev == a->dev && st.st_ino == a->ino)
        return;
    cdx_log(CDX_LOG_ERROR, "audit_file_replaced",
            "dir=\"%s\" msg=\"audit.log was %s under the running daemon; the trail goes on in a "
            "new file (the chain shows the break)\"",
            a->dir, gone ? "removed" : "replaced");
    close(a->fd);
    a->fd = -1;
    char body[64];
    snprintf(body, sizeof(body), "kind=reopen reason=%s", gone ? "removed" : "replaced");
    if (write_locked(a, body) && a->cfg.fail_open) {
        a->lost++;
        a->lost_pending++;
    }
}

static void timer_tick(app_audit *a, int64_t now)
{
    check_file_locked(a);
    if (a->state != APP_AUDIT_OK) /* retry: the record saying the trail is back */
        (void)write_locked(a, NULL);
    if (a->state == APP_AUDIT_OK && a->cfg.checkpoint_ms &&
        now - a->last_checkpoint_ms >= (int64_t)a->cfg.checkpoint_ms) {
        char body[96];
        snprintf(body, sizeof(body), "kind=checkpoint interval_ms=%u",
                 (unsigned)a->cfg.checkpoint_ms);
        if (!write_locked(a, body))
            a->last_checkpoint_ms = now;
    }
    if (a->state == APP_AUDIT_OK && a->cfg.sync != APP_AUDIT_SYNC_NONE && !a->syncing &&
        a->synced_seq < a->pos.seq)
        (void)sync_locked(a);
}

static void *timer_main(void *arg)
{
    app_audit *a = arg;
    uint32_t period = a->cfg.interval_ms;
    if (a->cfg.checkpoint_ms && a->cfg.checkpoint_ms < period)
        period = a->cfg.checkpoint_ms;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        struct timespec ts = cdx_mono_deadline(period);
        int rc = 0;
        while (!a->stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&a->timer_cv, &a->mu, &ts);
        if (!a->stop)
            timer_tick(a, cdx_mono_ms());
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* The newest rotated file's name in dir ("" if none). */
static void newest_rotated(const char *dir, char *out, size_t cap)
{
    out[0] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n == strlen(ROTATED_PREFIX) + 20 + strlen(ROTATED_SUFFIX) &&
            !strncmp(e->d_name, ROTATED_PREFIX, strlen(ROTATED_PREFIX)) &&
            !strcmp(e->d_name + n - strlen(ROTATED_SUFFIX), ROTATED_SUFFIX) &&
            strcmp(e->d_name, out) > 0)
            snprintf(out, cap, "%s", e->d_name);
    }
    closedir(d);
}

/*
 * Where the chain stands: the last record of `path`, verified under the MAC
 * key. A torn last line is cut off when `cut` (the current file), its size
 * in *torn.
 */
static cdx_err read_head(app_audit *a, const char *path, bool cut, uint64_t *torn)
{
    cdx_err err = CDX_OK;
    char *buf = NULL;
    int fd = open(path, (cut ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? CDX_OK
                               : cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "%s: cannot open: %s", path,
                                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        err = cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "%s is not a regular file", path);
        goto out;
    }
    size_t want = 2 * POL_AUDIT_LINE_MAX;
    off_t from = st.st_size > (off_t)want ? st.st_size - (off_t)want : 0;
    size_t n = (size_t)(st.st_size - from);
    if (n == 0)
        goto out;
    if (!(buf = malloc(n + 1))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if (pread(fd, buf, n, from) != (ssize_t)n) {
        err = cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "%s: cannot read its tail", path);
        goto out;
    }
    size_t end = n; /* one past the last newline */
    while (end && buf[end - 1] != '\n')
        end--;
    if (end < n) {
        if (!cut || ftruncate(fd, from + (off_t)end) != 0) {
            err = cdx_fail(CDX_ERR_INTEGRITY,
                           "%s ends in a partial record and cannot be repaired; run "
                           "`cipherdex-hsm audit verify`",
                           path);
            goto out;
        }
        *torn = n - end;
        cdx_log(CDX_LOG_WARN, "audit_torn_tail", "file=\"%s\" bytes=%llu", path,
                (unsigned long long)*torn);
    }
    if (end == 0) {
        if (from)
            err = cdx_fail(CDX_ERR_INTEGRITY, "%s: its last record is longer than a record may be",
                           path);
        goto out;
    }
    size_t start = end - 1;
    while (start && buf[start - 1] != '\n')
        start--;
    pol_audit_pos before;
    pol_audit_verifier v;
    if ((err = pol_audit_line_head(buf + start, end - start, &before)))
        goto bad;
    pol_audit_verify_init(&v, &before, a->cfg.mac, a->cfg.mac_arg);
    if ((err = pol_audit_verify_line(&v, buf + start, end - start)))
        goto bad;
    a->pos = v.pos;
    goto out;
bad:
    if (err == CDX_ERR_INTEGRITY)
        err = cdx_fail(CDX_ERR_INTEGRITY,
                       "%s: the last audit record does not verify under this deployment's audit "
                       "key (edited, or another deployment's trail); the daemon will not append "
                       "to it: run `cipherdex-hsm audit verify` and move the trail aside",
                       path);
out:
    free(buf);
    close(fd);
    return err;
}

cdx_err app_audit_open(const app_audit_config *cfg, const char *start_body, app_audit **out)
{
    *out = NULL;
    if (!cfg->dir || cfg->dir[0] != '/' || strlen(cfg->dir) > PATH_CAP - 64 || !cfg->mac ||
        cfg->interval_ms == 0)
        return cdx_fail(CDX_ERR_CONFIG, "[audit] dir must be an absolute path and interval_ms > 0");
    app_audit *a = calloc(1, sizeof(*a));
    if (!a)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    a->cfg = *cfg;
    a->fd = -1;
    snprintf(a->dir, sizeof(a->dir), "%s", cfg->dir);
    a->cfg.dir = a->dir;
    snprintf(a->path, sizeof(a->path), "%s/" APP_AUDIT_CURRENT, a->dir);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->synced_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->timer_cv, &ca);
    pthread_condattr_destroy(&ca);
    cdx_err err = CDX_OK;
    uint64_t torn = 0;
    if (mkdir(a->dir, 0700) != 0 && errno != EEXIST) {
        err = cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "[audit] dir %s cannot be created: %s", a->dir,
                       strerror(errno));
        goto fail;
    }
    struct stat st;
    if (stat(a->path, &st) == 0 && st.st_size > 0)
        err = read_head(a, a->path, true, &torn);
    if (!err && a->pos.seq == 0) { /* audit.log absent, empty, or only a torn first line */
        char name[256], path[PATH_CAP + 300];
        newest_rotated(a->dir, name, sizeof(name));
        if (name[0]) {
            snprintf(path, sizeof(path), "%s/%s", a->dir, name);
            err = read_head(a, path, false, &torn);
        }
    }
    if (err || (err = open_current(a)))
        goto fail;
    a->synced_seq = a->pos.seq;
    if (torn) {
        char body[64];
        snprintf(body, sizeof(body), "kind=torn_tail bytes=%llu", (unsigned long long)torn);
        err = write_locked(a, body);
    }
    if (!err)
        err = write_locked(a, start_body);
    if (!err && a->cfg.sync != APP_AUDIT_SYNC_NONE && fdatasync(a->fd) != 0)
        err = fail_locked(a, "fdatasync audit.log", errno);
    if (err)
        goto fail;
    a->synced_seq = a->pos.seq;
    sync_dir(a->dir);
    a->last_checkpoint_ms = cdx_mono_ms();
    if (pthread_create(&a->timer, NULL, timer_main, a) != 0) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot start the audit timer thread");
        goto fail;
    }
    a->timer_started = true;
    if (cfg->syslog) /* the trail's own identity, so a SIEM can select its lines */
        openlog("cipherdex-audit", LOG_NDELAY, LOG_AUTHPRIV);
    cdx_log(CDX_LOG_INFO, "audit_open", "dir=\"%s\" seq=%llu sync=%s fail=%s syslog=%s", a->dir,
            (unsigned long long)a->pos.seq,
            cfg->sync == APP_AUDIT_SYNC_ALWAYS ? "always"
            : cfg->sync == APP_AUDIT_SYNC_NONE ? "none"
                                               : "interval",
            cfg->fail_open ? "open" : "closed", cfg->syslog ? "yes" : "no");
    *out = a;
    return CDX_OK;
fail:
    app_audit_close(a, NULL);
    return err;
}

void app_audit_close(app_audit *a, const char *stop_body)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_broadcast(&a->timer_cv);
    pthread_mutex_unlock(&a->mu);
    if (a->timer_started)
        pthread_join(a->timer, NULL);
    pthread_mutex_lock(&a->mu);
    while (a->syncing)
        pthread_cond_wait(&a->synced_cv, &a->mu);
    if (stop_body && a->fd >= 0)
        (void)write_locked(a, stop_body);
    if (a->fd >= 0) {
        (void)fdatasync(a->fd);
        close(a->fd);
    }
    if (a->cfg.syslog && a->timer_started)
        closelog();
    pthread_mutex_unlock(&a->mu);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->synced_cv);
    pthread_cond_destroy(&a->timer_cv);
    free(a);
}

cdx_err app_audit_tail(app_audit *a, size_t n, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    int fd = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "audit.log cannot be read: %s", strerror(errno));
    cdx_err err = CDX_OK;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0 || n == 0 || st.st_size == 0)
        goto out;
    /* Read back from the end until n whole lines are in, at most n full-size records. */
    for (size_t want = n * 512 + POL_AUDIT_LINE_MAX;; want *= 2) {
        if (want > n * (POL_AUDIT_LINE_MAX + 1))
            want = n * (POL_AUDIT_LINE_MAX + 1);
        off_t from = st.st_size > (off_t)want ? st.st_size - (off_t)want : 0;
        size_t got = (size_t)(st.st_size - from);
        free(buf);
        if (!(buf = malloc(got + 1))) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        if (pread(fd, buf, got, from) != (ssize_t)got) {
            err = cdx_fail(CDX_ERR_AUDIT_UNAVAILABLE, "audit.log cannot be read");
            goto out;
        }
        size_t end = got, lines = 0, start = got;
        while (end && buf[end - 1] != '\n') /* a record being written: not yet whole */
            end--;
        for (start = end; start > 0; start--)
            if (buf[start - 1] == '\n' && start != end && ++lines == n)
                break;
        if (start == 0 && from > 0 && want < n * (POL_AUDIT_LINE_MAX + 1))
            continue; /* the first line may be partial and more are wanted: read further back */
        if (start == 0 && from > 0) /* skip a partial first line */
            while (start < end && buf[start++] != '\n')
                ;
        memmove(buf, buf + start, end - start);
        *len = end - start;
        *text = *len ? buf : NULL;
        if (*len)
            buf = NULL;
        break;
    }
out:
    free(buf);
    close(fd);
    return err;
}

void app_audit_stats_get(app_audit *a, app_audit_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    out->state = a->state;
    out->records = a->records;
    out->lost = a->lost;
    out->failures = a->failures;
    out->syncs = a->syncs;
    out->last_seq = a->pos.seq;
    snprintf(out->error, sizeof(out->error), "%s", a->error);
    pthread_mutex_unlock(&a->mu);
}
