/* The access policy (pol_policy.h). */
#include "pol_policy.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "pol_principal.h"

enum { PERM_READ = 1u << 0, PERM_WRITE = 1u << 1, PERM_ADMIN = 1u << 2, PERM_ATTEST = 1u << 3 };

/* A principal, or role:NAME (role >= 0 once resolved). */
typedef struct subj {
    char text[CDX_PRINCIPAL_MAX + 1];
    int role; /* -1: a principal; else the index in roles[] */
    unsigned line;
} subj;

typedef struct rule {
    char pattern[CDX_INDEX_NAME_MAX + 1];
    unsigned perm;
    subj s;
} rule;

typedef struct role {
    char name[CDX_INDEX_NAME_MAX + 1];
    char (*members)[CDX_PRINCIPAL_MAX + 1];
    size_t n, cap;
} role;

/* A [limits NAME] section; set: which fields it gives (bits LIM_*). */
enum { LIM_RPS = 1, LIM_BURST = 2, LIM_BPS = 4, LIM_CONC = 8 };
typedef struct limsec {
    bool is_default;
    subj s; /* the principal or role:NAME */
    pol_limits l;
    unsigned set;
} limsec;

/* A [ca NAME] section: principals (or roles) valid only from the CA of this fingerprint. */
typedef struct casec {
    char name[CDX_INDEX_NAME_MAX + 1];
    uint8_t sha256[32];
    bool have_sha;
    subj *who;
    size_t nwho, capwho;
    unsigned line;
} casec;

struct pol_policy {
    casec *cas;
    size_t ncas;
    limsec *lims;
    size_t nlims;
    rule *rules;
    size_t nrules;
    role *roles;
    size_t nroles;
    subj *admins, *operators;
    size_t nadmins, noperators;
};

struct pol_builder {
    pol_policy p;
    size_t caprules, capadmins, capops, caplims, capcas;
};

const char *pol_need_name(pol_need n)
{
    switch (n) {
    case POL_NEED_NONE:
        return "none";
    case POL_NEED_READ:
        return "read";
    case POL_NEED_WRITE:
        return "write";
    case POL_NEED_ADMIN:
        return "admin";
    case POL_NEED_OPERATOR:
        return "operator";
    case POL_NEED_ATTEST:
        return "attest";
    }
    return "?";
}

cdx_err pol_builder_new(pol_builder **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? CDX_OK : cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
}

static void policy_clear(pol_policy *p)
{
    for (size_t i = 0; i < p->nroles; i++)
        free(p->roles[i].members);
    free(p->roles);
    free(p->rules);
    free(p->lims);
    for (size_t i = 0; i < p->ncas; i++)
        free(p->cas[i].who);
    free(p->cas);
    free(p->admins);
    free(p->operators);
    memset(p, 0, sizeof(*p));
}

void pol_builder_free(pol_builder *b)
{
    if (!b)
        return;
    policy_clear(&b->p);
    free(b);
}

void pol_policy_free(pol_policy *p)
{
    if (!p)
        return;
    policy_clear(p);
    free(p);
}

/* Grow *v (n used, *cap slots of sz bytes) by one slot, at most max. */
static cdx_err grow(void **v, size_t n, size_t *cap, size_t sz, size_t max, const char *what)
{
    if (n >= max)
        return cdx_fail(CDX_ERR_CONFIG, "more than %zu %s", max, what);
    if (n < *cap)
        return CDX_OK;
    size_t nc = *cap ? *cap * 2 : 8;
    if (nc > max)
        nc = max;
    void *nv = realloc(*v, nc * sz);
    if (!nv)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *v = nv;
    *cap = nc;
    return CDX_OK;
}

/* A role or index name in a section header: [A-Za-z0-9_.-], plus * and ? in patterns. */
static cdx_err check_name(const char *what, const char *v, bool pattern)
{
    size_t n = strlen(v);
    if (n == 0 || n > CDX_INDEX_NAME_MAX)
        return cdx_fail(CDX_ERR_CONFIG, "%s `%.40s` must be 1 to %d characters", what, v,
                        CDX_INDEX_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-' || (pattern && (c == '*' || c == '?'));
        if (!ok)
            return cdx_fail(CDX_ERR_CONFIG, "%s `%.40s` has `%c` (allowed: A-Z a-z 0-9 _ . -%s)",
                            what, v, c, pattern ? " and the wildcards * ?" : "");
    }
    return CDX_OK;
}

/*
 * Split a comma-separated list, trimming blanks, calling fn for each item.
 * An empty item is an error.
 */
typedef cdx_err (*item_fn)(pol_builder *b, void *arg, const char *item);

static cdx_err each_item(pol_builder *b, const char *key, const char *value, item_fn fn, void *arg)
{
    size_t count = 0;
    const char *s = value;
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0)
            return cdx_fail(CDX_ERR_CONFIG, "%s: empty entry in the list", key);
        if (n > CDX_PRINCIPAL_MAX)
            return cdx_fail(CDX_ERR_CONFIG, "%s: entry `%.40s...` longer than %d bytes", key, s,
                            CDX_PRINCIPAL_MAX);
        if (++count > CDX_POLICY_SUBJECTS_MAX)
            return cdx_fail(CDX_ERR_CONFIG, "%s: more than %d entries", key,
                            CDX_POLICY_SUBJECTS_MAX);
        char item[CDX_PRINCIPAL_MAX + 1];
        memcpy(item, s, n);
        item[n] = '\0';
        cdx_err err = fn(b, arg, item);
        if (err)
            return err;
        if (!e)
            return CDX_OK;
        s = e + 1;
    }
}

/* A subject: role:NAME (resolved at finish) or a typed principal. */
static cdx_err parse_subject(const char *item, unsigned line, subj *out)
{
    memset(out, 0, sizeof(*out));
    out->role = -1;
    out->line = line;
    if (!strncmp(item, "role:", 5)) {
        cdx_err err = check_name("role", item + 5, false);
        if (err)
            return err;
        out->role = -2; /* to resolve */
    } else {
        cdx_err err = pol_principal_check(item);
        if (err)
            return err;
    }
    snprintf(out->text, sizeof(out->text), "%s", item);
    return CDX_OK;
}

struct list_arg {
    subj **v;
    size_t *n, *cap;
    unsigned line;
    const char *what;
};

static cdx_err add_listed(pol_builder *b, void *arg, const char *item)
{
    (void)b;
    struct list_arg *a = arg;
    cdx_err err =
        grow((void **)a->v, *a->n, a->cap, sizeof(subj), CDX_POLICY_SUBJECTS_MAX, a->what);
    if (!err)
        err = parse_subject(item, a->line, &(*a->v)[*a->n]);
    if (!err)
        (*a->n)++;
    return err;
}

struct rule_arg {
    const char *pattern;
    unsigned perm, line;
};

static cdx_err add_rule(pol_builder *b, void *arg, const char *item)
{
    struct rule_arg *a = arg;
    cdx_err err = grow((void **)&b->p.rules, b->p.nrules, &b->caprules, sizeof(rule),
                       CDX_POLICY_RULES_MAX, "grants in the policy");
    if (err)
        return err;
    rule *r = &b->p.rules[b->p.nrules];
    memset(r, 0, sizeof(*r));
    snprintf(r->pattern, sizeof(r->pattern), "%s", a->pattern);
    r->perm = a->perm;
    if ((err = parse_subject(item, a->line, &r->s)))
        return err;
    b->p.nrules++;
    return CDX_OK;
}

static role *find_role(const pol_policy *p, const char *name)
{
    for (size_t i = 0; i < p->nroles; i++)
        if (!strcmp(p->roles[i].name, name))
            return &p->roles[i];
    return NULL;
}

static cdx_err add_member(pol_builder *b, void *arg, const char *item)
{
    (void)b;
    role *r = arg;
    if (!strncmp(item, "role:", 5))
        return cdx_fail(CDX_ERR_CONFIG, "members: `%s`: a role cannot contain a role", item);
    cdx_err err = pol_principal_check(item);
    if (!err)
        err = grow((void **)&r->members, r->n, &r->cap, sizeof(*r->members),
                   CDX_POLICY_SUBJECTS_MAX, "members in a role");
    if (err)
        return err;
    snprintf(r->members[r->n++], sizeof(r->members[0]), "%s", item);
    return CDX_OK;
}

/* Decimal digits, optionally K, M or G (binary multiples), at most max. */
static cdx_err parse_count(const char *key, const char *v, uint64_t max, uint64_t *out)
{
    uint64_t n = 0;
    const char *s = v;
    if (*s < '0' || *s > '9')
        return cdx_fail(CDX_ERR_CONFIG, "%s: `%.40s` is not a number", key, v);
    for (; *s >= '0' && *s <= '9'; s++) {
        if (n > (UINT64_MAX - 9) / 10)
            return cdx_fail(CDX_ERR_CONFIG, "%s: `%.40s` is too large", key, v);
        n = n * 10 + (uint64_t)(*s - '0');
    }
    unsigned shift = *s == 'K' ? 10 : *s == 'M' ? 20 : *s == 'G' ? 30 : 0;
    if (shift)
        s++;
    if (*s)
        return cdx_fail(CDX_ERR_CONFIG, "%s: `%.40s` is not a number (digits, then K, M or G)", key,
                        v);
    if (shift && n > (max >> shift))
        return cdx_fail(CDX_ERR_CONFIG, "%s: `%.40s` is larger than %llu", key, v,
                        (unsigned long long)max);
    n <<= shift;
    if (n > max)
        return cdx_fail(CDX_ERR_CONFIG, "%s: `%.40s` is larger than %llu", key, v,
                        (unsigned long long)max);
    *out = n;
    return CDX_OK;
}

static cdx_err limits_key(pol_builder *b, unsigned line, const char *name, const char *key,
                          const char *value)
{
    pol_policy *p = &b->p;
    bool is_default = !strcmp(name, "default");
    subj s;
    cdx_err err = CDX_OK;
    if (!is_default && (err = parse_subject(name, line, &s)))
        return err;
    limsec *ls = NULL;
    for (size_t i = 0; i < p->nlims; i++)
        if (is_default ? p->lims[i].is_default
                       : !p->lims[i].is_default && !strcmp(p->lims[i].s.text, name))
            ls = &p->lims[i];
    if (!ls) {
        if ((err = grow((void **)&p->lims, p->nlims, &b->caplims, sizeof(limsec),
                        CDX_POLICY_ROLES_MAX, "[limits] sections")))
            return err;
        ls = &p->lims[p->nlims++];
        memset(ls, 0, sizeof(*ls));
        ls->is_default = is_default;
        if (!is_default)
            ls->s = s;
    }
    uint64_t v = 0;
    if (!strcmp(key, "requests_per_second")) {
        if (!(err = parse_count(key, value, UINT32_MAX, &v)))
            ls->l.requests_per_s = (uint32_t)v, ls->set |= LIM_RPS;
    } else if (!strcmp(key, "burst")) {
        if (!(err = parse_count(key, value, UINT32_MAX, &v)))
            ls->l.burst = (uint32_t)v, ls->set |= LIM_BURST;
    } else if (!strcmp(key, "bytes_per_second")) {
        if (!(err = parse_count(key, value, 1ull << 40, &v)))
            ls->l.bytes_per_s = v, ls->set |= LIM_BPS;
    } else if (!strcmp(key, "concurrency")) {
        if (!(err = parse_count(key, value, 1u << 20, &v)))
            ls->l.concurrency = (uint32_t)v, ls->set |= LIM_CONC;
    } else {
        err = cdx_fail(CDX_ERR_CONFIG,
                       "[limits %s] has no key `%s` (known: requests_per_second, burst, "
                       "bytes_per_second, concurrency)",
                       name, key);
    }
    return err;
}

/* 64 hex digits, optionally in pairs separated by ':' (as `openssl x509 -fingerprint`). */
static cdx_err parse_sha256(const char *v, uint8_t out[32])
{
    size_t n = 0;
    for (const char *s = v; *s; s++) {
        if (*s == ':')
            continue;
        int d = *s >= '0' && *s <= '9'   ? *s - '0'
                : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
                : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10
                                         : -1;
        if (d < 0 || n >= 64)
            return cdx_fail(CDX_ERR_CONFIG,
                            "sha256: `%.80s` is not a SHA-256 fingerprint (64 hex digits, `:` "
                            "between pairs allowed; `openssl x509 -noout -fingerprint -sha256`)",
                            v);
        if (n % 2 == 0)
            out[n / 2] = (uint8_t)(d << 4);
        else
            out[n / 2] |= (uint8_t)d;
        n++;
    }
    if (n != 64)
        return cdx_fail(CDX_ERR_CONFIG, "sha256: `%.80s` has %zu hex digits, need 64", v, n);
    return CDX_OK;
}

struct ca_arg {
    casec *c;
    unsigned line;
};

static cdx_err add_ca_subject(pol_builder *b, void *arg, const char *item)
{
    (void)b;
    struct ca_arg *a = arg;
    cdx_err err = grow((void **)&a->c->who, a->c->nwho, &a->c->capwho, sizeof(subj),
                       CDX_POLICY_SUBJECTS_MAX, "principals in a [ca] section");
    if (!err)
        err = parse_subject(item, a->line, &a->c->who[a->c->nwho]);
    if (!err)
        a->c->nwho++;
    return err;
}

static cdx_err ca_key(pol_builder *b, unsigned line, const char *name, const char *key,
                      const char *value)
{
    pol_policy *p = &b->p;
    cdx_err err = check_name("ca", name, false);
    if (err)
        return err;
    casec *c = NULL;
    for (size_t i = 0; i < p->ncas; i++)
        if (!strcmp(p->cas[i].name, name))
            c = &p->cas[i];
    if (!c) {
        if ((err = grow((void **)&p->cas, p->ncas, &b->capcas, sizeof(casec), CDX_POLICY_ROLES_MAX,
                        "[ca] sections")))
            return err;
        c = &p->cas[p->ncas++];
        memset(c, 0, sizeof(*c));
        snprintf(c->name, sizeof(c->name), "%s", name);
        c->line = line;
    }
    if (!strcmp(key, "sha256")) {
        if ((err = parse_sha256(value, c->sha256)))
            return err;
        c->have_sha = true;
        return CDX_OK;
    }
    if (!strcmp(key, "principals"))
        return each_item(b, key, value, add_ca_subject, &(struct ca_arg){c, line});
    return cdx_fail(CDX_ERR_CONFIG, "[ca %s] has no key `%s` (known: sha256, principals)", name,
                    key);
}

cdx_err pol_builder_key(pol_builder *b, unsigned line, const char *section, const char *key,
                        const char *value)
{
    pol_policy *p = &b->p;
    if (!strcmp(section, "appliance")) {
        if (!strcmp(key, "admins"))
            return each_item(b, key, value, add_listed,
                             &(struct list_arg){&p->admins, &p->nadmins, &b->capadmins, line,
                                                "appliance admins"});
        if (!strcmp(key, "operators"))
            return each_item(
                b, key, value, add_listed,
                &(struct list_arg){&p->operators, &p->noperators, &b->capops, line, "operators"});
        return cdx_fail(CDX_ERR_CONFIG, "[appliance] has no key `%s` (known: admins, operators)",
                        key);
    }
    if (!strncmp(section, "role ", 5)) {
        const char *name = section + 5;
        cdx_err err = check_name("role", name, false);
        if (err)
            return err;
        if (strcmp(key, "members"))
            return cdx_fail(CDX_ERR_CONFIG, "[role %s] has no key `%s` (known: members)", name,
                            key);
        role *r = find_role(p, name);
        if (!r) {
            size_t cap = p->nroles; /* roles grow one at a time: few, and rarely */
            if ((err = grow((void **)&p->roles, p->nroles, &cap, sizeof(role), CDX_POLICY_ROLES_MAX,
                            "roles")))
                return err;
            r = &p->roles[p->nroles++];
            memset(r, 0, sizeof(*r));
            snprintf(r->name, sizeof(r->name), "%s", name);
        }
        return each_item(b, key, value, add_member, r);
    }
    if (!strncmp(section, "index ", 6)) {
        const char *pattern = section + 6;
        cdx_err err = check_name("index pattern", pattern, true);
        if (err)
            return err;
        unsigned perm = !strcmp(key, "read")     ? PERM_READ
                        : !strcmp(key, "write")  ? PERM_WRITE
                        : !strcmp(key, "admin")  ? PERM_ADMIN
                        : !strcmp(key, "attest") ? PERM_ATTEST
                                                 : 0;
        if (!perm)
            return cdx_fail(CDX_ERR_CONFIG,
                            "[index %s] has no key `%s` (known: read, write, admin, attest)",
                            pattern, key);
        return each_item(b, key, value, add_rule, &(struct rule_arg){pattern, perm, line});
    }
    if (!strncmp(section, "limits ", 7))
        return limits_key(b, line, section + 7, key, value);
    if (!strncmp(section, "ca ", 3))
        return ca_key(b, line, section + 3, key, value);
    return cdx_fail(CDX_ERR_CONFIG,
                    "unknown section [%s] (known: [appliance], [role NAME], [index PATTERN], "
                    "[limits NAME], [ca NAME])",
                    section);
}

cdx_err pol_builder_admin(pol_builder *b, const char *principal)
{
    return add_listed(
        b, &(struct list_arg){&b->p.admins, &b->p.nadmins, &b->capadmins, 0, "appliance admins"},
        principal);
}

/* Resolve role:NAME in one list. */
static cdx_err resolve(const pol_policy *p, subj *s)
{
    if (s->role != -2)
        return CDX_OK;
    const role *r = find_role(p, s->text + 5);
    if (!r)
        return cdx_fail(CDX_ERR_CONFIG, "line %u: %s is not defined (no [role %s] section)",
                        s->line, s->text, s->text + 5);
    s->role = (int)(r - p->roles);
    return CDX_OK;
}

cdx_err pol_builder_finish(pol_builder *b, pol_policy **out)
{
    *out = NULL;
    pol_policy *p = &b->p;
    cdx_err err = CDX_OK;
    for (size_t i = 0; !err && i < p->nrules; i++)
        err = resolve(p, &p->rules[i].s);
    for (size_t i = 0; !err && i < p->nadmins; i++)
        err = resolve(p, &p->admins[i]);
    for (size_t i = 0; !err && i < p->noperators; i++)
        err = resolve(p, &p->operators[i]);
    for (size_t i = 0; !err && i < p->nlims; i++)
        if (!p->lims[i].is_default)
            err = resolve(p, &p->lims[i].s);
    for (size_t i = 0; !err && i < p->ncas; i++) {
        if (!p->cas[i].have_sha)
            err = cdx_fail(CDX_ERR_CONFIG, "line %u: [ca %s] has no sha256", p->cas[i].line,
                           p->cas[i].name);
        for (size_t j = 0; !err && j < p->cas[i].nwho; j++)
            err = resolve(p, &p->cas[i].who[j]);
    }
    if (!err && !(*out = malloc(sizeof(**out))))
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (err) {
        pol_builder_free(b);
        return err;
    }
    **out = *p;
    free(b); /* its arrays now belong to *out */
    return CDX_OK;
}

static bool matches(const pol_policy *p, const subj *s, const char *principal)
{
    if (s->role < 0)
        return !strcmp(s->text, principal);
    const role *r = &p->roles[s->role];
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->members[i], principal))
            return true;
    return false;
}

static bool listed(const pol_policy *p, const subj *v, size_t n, const char *principal)
{
    for (size_t i = 0; i < n; i++)
        if (matches(p, &v[i], principal))
            return true;
    return false;
}

/* The permissions `principal` holds on `index` through [index] rules. */
static unsigned perms_on(const pol_policy *p, const char *principal, const char *index)
{
    unsigned perm = 0;
    for (size_t i = 0; i < p->nrules; i++) {
        const rule *r = &p->rules[i];
        if ((perm | r->perm) != perm && fnmatch(r->pattern, index, 0) == 0 &&
            matches(p, &r->s, principal))
            perm |= r->perm;
    }
    return perm;
}

bool pol_allows(const pol_policy *p, const char *principal, pol_need need, const char *index)
{
    if (need == POL_NEED_NONE)
        return true;
    if (!p || !principal)
        return false;
    if (listed(p, p->admins, p->nadmins, principal))
        return true;
    if (need == POL_NEED_OPERATOR)
        return listed(p, p->operators, p->noperators, principal);
    if (!index)
        return false;
    unsigned perm = perms_on(p, principal, index);
    if (perm & PERM_ADMIN)
        return true;
    return need == POL_NEED_READ     ? (perm & PERM_READ) != 0
           : need == POL_NEED_WRITE  ? (perm & PERM_WRITE) != 0
           : need == POL_NEED_ATTEST ? (perm & PERM_ATTEST) != 0
                                     : false;
}

bool pol_sees(const pol_policy *p, const char *principal, const char *index)
{
    if (!p || !principal || !index)
        return false;
    return listed(p, p->admins, p->nadmins, principal) ||
           listed(p, p->operators, p->noperators, principal) || perms_on(p, principal, index) != 0;
}

bool pol_issuer_ok(const pol_policy *p, const char *principal, const uint8_t issuer[32])
{
    if (!p || !principal)
        return true;
    bool bound = false;
    for (size_t i = 0; i < p->ncas; i++) {
        const casec *c = &p->cas[i];
        if (!listed(p, c->who, c->nwho, principal))
            continue;
        if (issuer && !memcmp(c->sha256, issuer, 32))
            return true;
        bound = true;
    }
    return !bound;
}

/* The more generous of two limits: 0 (unlimited) wins, else the larger. */
static uint64_t generous(uint64_t a, uint64_t b)
{
    return a == 0 || b == 0 ? 0 : a > b ? a : b;
}

void pol_limits_of(const pol_policy *p, const char *principal, pol_limits *out)
{
    memset(out, 0, sizeof(*out));
    if (!p)
        return;
    for (size_t i = 0; i < p->nlims; i++)
        if (p->lims[i].is_default)
            *out = p->lims[i].l;
    pol_limits best = {0};
    unsigned got = 0;
    for (size_t i = 0; principal && i < p->nlims; i++) {
        const limsec *ls = &p->lims[i];
        if (ls->is_default || !matches(p, &ls->s, principal))
            continue;
        if (ls->set & LIM_RPS)
            best.requests_per_s =
                (uint32_t)(got & LIM_RPS ? generous(best.requests_per_s, ls->l.requests_per_s)
                                         : ls->l.requests_per_s);
        if (ls->set & LIM_BURST)
            best.burst =
                (uint32_t)(got & LIM_BURST ? generous(best.burst, ls->l.burst) : ls->l.burst);
        if (ls->set & LIM_BPS)
            best.bytes_per_s =
                got & LIM_BPS ? generous(best.bytes_per_s, ls->l.bytes_per_s) : ls->l.bytes_per_s;
        if (ls->set & LIM_CONC)
            best.concurrency =
                (uint32_t)(got & LIM_CONC ? generous(best.concurrency, ls->l.concurrency)
                                          : ls->l.concurrency);
        got |= ls->set;
    }
    if (got & LIM_RPS)
        out->requests_per_s = best.requests_per_s;
    if (got & LIM_BURST)
        out->burst = best.burst;
    if (got & LIM_BPS)
        out->bytes_per_s = best.bytes_per_s;
    if (got & LIM_CONC)
        out->concurrency = best.concurrency;
}

void pol_policy_counts(const pol_policy *p, size_t *rules, size_t *roles, size_t *admins,
                       size_t *operators)
{
    *rules = p ? p->nrules : 0;
    *roles = p ? p->nroles : 0;
    *admins = p ? p->nadmins : 0;
    *operators = p ? p->noperators : 0;
}
