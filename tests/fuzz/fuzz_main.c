/* fuzz_main: the replay driver shared by the fuzz targets (see fuzz_main.h). */
#include "fuzz_main.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int fuzz_seed_sel(const char *dir, const char *name, const void *sel, size_t nsel, const void *b,
                  size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = (nsel == 0 || fwrite(sel, 1, nsel, f) == nsel) && (n == 0 || fwrite(b, 1, n, f) == n);
    return fclose(f) == 0 && ok ? 0 : -1;
}

int fuzz_seed(const char *dir, const char *name, const void *b, size_t n)
{
    return fuzz_seed_sel(dir, name, NULL, 0, b, n);
}

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0700);
            *s = '/';
        }
    }
    return mkdir(p, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        uint8_t *p = realloc(buf, cap * 2);
        if (!p) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = p;
        cap *= 2;
    }
    fclose(f);
    if (!buf)
        return -1;
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int run_path(const char *path, size_t *count)
{
    struct stat sb;
    if (stat(path, &sb)) {
        perror(path);
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        (*count)++;
        return run_file(path);
    }
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        char p[4096];
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        rc |= run_path(p, count);
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    int rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s [--seeds DIR] FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seeds") && i + 1 < argc) {
            if (make_dirs(argv[++i]) || fuzz_write_seeds(argv[i])) {
                fprintf(stderr, "cannot write seeds to %s\n", argv[i]);
                return 1;
            }
            continue;
        }
        rc |= run_path(argv[i], &count);
    }
    const char *name = strrchr(argv[0], '/');
    printf("%s: replayed %zu inputs\n", name ? name + 1 : argv[0], count);
    if (count == 0) {
        fprintf(stderr, "no inputs replayed\n");
        rc = 1;
    }
    return rc ? 1 : 0;
}
