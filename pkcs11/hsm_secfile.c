#include "hsm_secfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hsm_secmem.h"

/* Open and vet the file; returns the fd, or -1 with the error in *err. */
static int open_checked(const char *path, const hsm_secfile_opts *o, cdx_err *err)
{
    struct stat st;
    /* O_NONBLOCK: opening a FIFO planted under the name must not hang start-up; it is
     * refused below as not a regular file (regular files ignore the flag). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);

    if (fd < 0) {
        *err =
            errno == ELOOP
                ? cdx_fail(o->err, "%s %s is a symbolic link: name the file itself", o->what, path)
                : cdx_fail(o->err, "cannot open %s %s: %s", o->what, path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *err = cdx_fail(o->err, "%s %s is not a regular file", o->what, path);
        goto fail;
    }
    if (!o->any_mode && (st.st_mode & (S_IRWXG | S_IRWXO))) {
        *err = cdx_fail(o->err, "%s %s is accessible by group or others (mode %03o): chmod 600 it",
                        o->what, path, (unsigned)(st.st_mode & 0777));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

cdx_err hsm_secfile_check(const char *path, const hsm_secfile_opts *o)
{
    cdx_err err = CDX_OK;
    int fd = open_checked(path, o, &err);

    if (fd >= 0)
        close(fd);
    return err;
}

cdx_err hsm_secfile_read(const char *path, const hsm_secfile_opts *o, char **out, size_t *len)
{
    cdx_err err = CDX_OK;
    char *buf = NULL;
    size_t n = 0;
    int fd, rc;

    *out = NULL;
    *len = 0;
    if ((fd = open_checked(path, o, &err)) < 0)
        return err;
    rc = hsm_secmem_read_fd(fd, o->max, &buf, &n);
    if (rc == E2BIG) {
        err = cdx_fail(o->err, "%s %s is longer than %zu bytes", o->what, path, o->max);
        goto out;
    }
    if (rc == ENOMEM) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading %s %s", o->what,
                       path);
        goto out;
    }
    if (rc) {
        err = cdx_fail(o->err, "cannot read %s %s: %s", o->what, path, strerror(rc));
        goto out;
    }
    if (n > 0 && buf[n - 1] == '\n') /* one line ending, as `echo` or an editor writes it */
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0 && !o->allow_empty) {
        err = cdx_fail(o->err, "%s %s is empty", o->what, path);
        goto out;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    hsm_secmem_free(buf);
    close(fd);
    return err;
}
