/*
 * p11probe.c - what a PKCS#11 module offers, for the module matrix
 * (tests/hsm_matrix/run_matrix.sh). Independent of Cipherdex's custody code,
 * so the matrix can tell "the token lacks X" from "Cipherdex mishandles X".
 *
 *   cdx_p11probe MODULE LABEL [INIT_ARGS]
 *
 * Loads MODULE (dlopen + C_GetFunctionList, one list, one C_Initialize with
 * CKF_OS_LOCKING_OK and INIT_ARGS as pReserved: NSS softokn needs
 * "configdir='sql:DIR' ..."), finds the initialised token labelled LABEL and
 * prints one line per fact:
 *
 *   token LABEL|MODEL|MANUFACTURER
 *   mech 0x0000210a 0x00060000      (mechanism, CKF_* flags)
 *
 * Exit 0 when the token was found, 1 otherwise (reason on stderr), 2 usage.
 * No login: the mechanism list is public.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#define MAX_SLOTS 64
#define MAX_MECHS 1024

static void trim(char *dst, const unsigned char *src, size_t n)
{
    memcpy(dst, src, n);
    dst[n] = '\0';
    while (n > 0 && dst[n - 1] == ' ')
        dst[--n] = '\0';
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: cdx_p11probe MODULE LABEL [INIT_ARGS]\n");
        return 2;
    }
    const char *module = argv[1], *label = argv[2], *init_args = argc == 4 ? argv[3] : NULL;

    void *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "p11probe: dlopen %s: %s\n", module, dlerror());
        return 1;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR f = NULL;
    if (!get || get(&f) != CKR_OK || !f) {
        fprintf(stderr, "p11probe: %s: no usable C_GetFunctionList\n", module);
        return 1;
    }
    CK_C_INITIALIZE_ARGS ia;
    memset(&ia, 0, sizeof(ia));
    ia.flags = CKF_OS_LOCKING_OK;
    ia.pReserved = (void *)init_args;
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "p11probe: C_Initialize: 0x%lx\n", (unsigned long)rv);
        return 1;
    }

    CK_SLOT_ID slots[MAX_SLOTS];
    CK_ULONG ns = MAX_SLOTS;
    int found = 0;
    rv = f->C_GetSlotList(CK_TRUE, slots, &ns);
    if (rv != CKR_OK) {
        fprintf(stderr, "p11probe: C_GetSlotList: 0x%lx\n", (unsigned long)rv);
        ns = 0;
    }
    for (CK_ULONG i = 0; i < ns && !found; i++) {
        CK_TOKEN_INFO ti;
        char lab[33], model[17], manuf[33];
        rv = f->C_GetTokenInfo(slots[i], &ti);
        if (rv != CKR_OK) {
            fprintf(stderr, "p11probe: C_GetTokenInfo(slot %lu): 0x%lx\n", (unsigned long)slots[i],
                    (unsigned long)rv);
            continue;
        }
        trim(lab, ti.label, sizeof(ti.label));
        if (strcmp(lab, label) != 0 || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        found = 1;
        trim(model, ti.model, sizeof(ti.model));
        trim(manuf, ti.manufacturerID, sizeof(ti.manufacturerID));
        printf("token %s|%s|%s\n", lab, model, manuf);

        static CK_MECHANISM_TYPE mechs[MAX_MECHS];
        CK_ULONG nm = MAX_MECHS;
        rv = f->C_GetMechanismList(slots[i], mechs, &nm);
        if (rv != CKR_OK) {
            fprintf(stderr, "p11probe: C_GetMechanismList: 0x%lx\n", (unsigned long)rv);
            nm = 0;
        }
        for (CK_ULONG m = 0; m < nm; m++) {
            CK_MECHANISM_INFO mi;
            CK_FLAGS fl = 0;
            if (f->C_GetMechanismInfo(slots[i], mechs[m], &mi) == CKR_OK)
                fl = mi.flags;
            printf("mech 0x%08lx 0x%08lx\n", (unsigned long)mechs[m], (unsigned long)fl);
        }
    }
    f->C_Finalize(NULL);
    /* No dlclose: some modules (NSS) leave threads or atexit handlers behind. */
    if (!found) {
        fprintf(stderr, "p11probe: no initialised token labelled '%s' in %s\n", label, module);
        return 1;
    }
    return 0;
}
