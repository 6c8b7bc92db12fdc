/*
 * pol_evidence_oids.h - every object identifier of Cipherdex's attestation
 * evidence, in one table (docs/ATTESTATION.md "OIDs").
 *
 * PROVISIONAL. draft-ietf-rats-pkix-key-attestation leaves its OIDs to be
 * assigned (its module uses the placeholder arc 1.2.3.999). Until IANA
 * assigns them, Cipherdex uses an arc of its own under the UUID arc 2.25
 * (ITU-T X.667: anyone may mint 2.25.<UUID as an integer>, no registration):
 *
 *   CDX_EV_ARC = 2.25.144211767722024654500488149802296319553
 *                (UUID 6c7e2d1a-0f3b-4c55-9a8e-3d2b7f1c9e41)
 *
 * Below it the numbering mirrors the draft's where the meaning is the same
 * (entity types .0.{0,1,2}; transaction, platform and key claims
 * .1.{0,1,2}.N with the draft's N), and Cipherdex's own claims take numbers
 * from 20 up so they never collide with the draft's. When the draft's OIDs
 * are assigned, a new evidence version (TbsPkixEvidence.version 2) will
 * switch to them; version 1 keeps these.
 *
 * Each row: X(ENUM, entity, suffix bytes (after the arc), value type,
 * flags, name). Suffixes are single base-128 bytes (all < 128). Value
 * types: the AttributeValue CHOICE alternative. Flags: R required once, M
 * may repeat (otherwise at most once).
 */
#ifndef POL_EVIDENCE_OIDS_H
#define POL_EVIDENCE_OIDS_H

/* DER contents octets of CDX_EV_ARC (2.25.144211767722024654500488149802296319553). */
#define CDX_EV_ARC_DER                                                                             \
    0x69, 0x81, 0xd8, 0xfe, 0x96, 0xc6, 0xc1, 0xf3, 0xda, 0xb1, 0xab, 0x9a, 0xc7, 0x8f, 0xa5,      \
        0xb7, 0xf8, 0xf2, 0xbc, 0x41
#define CDX_EV_ARC_DER_LEN 20
#define CDX_EV_ARC_TEXT    "2.25.144211767722024654500488149802296319553"

/* Not provisional: ecdsa-with-SHA256 (RFC 5758), 1.2.840.10045.4.3.2, the signature algorithm. */
#define CDX_EV_ECDSA_SHA256_DER 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02
#define CDX_EV_ECDSA_SHA256_LEN 8

/* Entity types: CDX_EV_ARC.0.N (the draft's id-pkix-evidence-entity-*). */
#define CDX_EV_ENTITIES(X)                                                                         \
    X(POL_EV_ENT_TRANSACTION, 0, "transaction")                                                    \
    X(POL_EV_ENT_PLATFORM, 1, "platform")                                                          \
    X(POL_EV_ENT_KEY, 2, "key")

/* Claims: CDX_EV_ARC.1.<entity>.N. */
#define CDX_EV_CLAIMS(X)                                                                           \
    /* transaction */                                                                              \
    X(POL_EV_NONCE, POL_EV_ENT_TRANSACTION, 0, POL_EV_T_BYTES, POL_EV_F_R, "nonce")                \
    X(POL_EV_TIMESTAMP, POL_EV_ENT_TRANSACTION, 1, POL_EV_T_TIME, POL_EV_F_R, "timestamp")         \
    X(POL_EV_AK_ID, POL_EV_ENT_TRANSACTION, 20, POL_EV_T_BYTES, POL_EV_F_R, "attestation_key_id")  \
    /* platform: the token (CK_TOKEN_INFO at the request) and the appliance */                     \
    X(POL_EV_MANUFACTURER, POL_EV_ENT_PLATFORM, 0, POL_EV_T_UTF8, POL_EV_F_R, "manufacturer")      \
    X(POL_EV_MODEL, POL_EV_ENT_PLATFORM, 2, POL_EV_T_UTF8, POL_EV_F_R, "model")                    \
    X(POL_EV_HW_VERSION, POL_EV_ENT_PLATFORM, 3, POL_EV_T_UTF8, POL_EV_F_R, "hardware_version")    \
    X(POL_EV_SERIAL, POL_EV_ENT_PLATFORM, 4, POL_EV_T_UTF8, POL_EV_F_R, "serial")                  \
    X(POL_EV_SW_NAME, POL_EV_ENT_PLATFORM, 5, POL_EV_T_UTF8, POL_EV_F_R, "software_name")          \
    X(POL_EV_SW_VERSION, POL_EV_ENT_PLATFORM, 6, POL_EV_T_UTF8, POL_EV_F_R, "software_version")    \
    X(POL_EV_FW_VERSION, POL_EV_ENT_PLATFORM, 20, POL_EV_T_UTF8, POL_EV_F_R, "firmware_version")   \
    X(POL_EV_TOKEN_LABEL, POL_EV_ENT_PLATFORM, 21, POL_EV_T_UTF8, POL_EV_F_R, "token_label")       \
    X(POL_EV_SOFTWARE_TOKEN, POL_EV_ENT_PLATFORM, 22, POL_EV_T_BOOL, POL_EV_F_R, "software_token") \
    X(POL_EV_ASSURANCE, POL_EV_ENT_PLATFORM, 23, POL_EV_T_UTF8, POL_EV_F_R, "assurance")           \
    /* key: the index key, read on the token at the request */                                     \
    X(POL_EV_KEY_ID, POL_EV_ENT_KEY, 0, POL_EV_T_BYTES, POL_EV_F_R, "identifier")                  \
    X(POL_EV_EXTRACTABLE, POL_EV_ENT_KEY, 2, POL_EV_T_BOOL, POL_EV_F_R, "extractable")             \
    X(POL_EV_SENSITIVE, POL_EV_ENT_KEY, 3, POL_EV_T_BOOL, POL_EV_F_R, "sensitive")                 \
    X(POL_EV_NEVER_EXTRACTABLE, POL_EV_ENT_KEY, 4, POL_EV_T_BOOL, POL_EV_F_R, "never_extractable") \
    X(POL_EV_LOCAL, POL_EV_ENT_KEY, 5, POL_EV_T_BOOL, POL_EV_F_R, "local")                         \
    X(POL_EV_ALWAYS_SENSITIVE, POL_EV_ENT_KEY, 20, POL_EV_T_BOOL, POL_EV_F_R, "always_sensitive")  \
    X(POL_EV_CAP_SIGN, POL_EV_ENT_KEY, 21, POL_EV_T_BOOL, POL_EV_F_R, "sign")                      \
    X(POL_EV_CAP_VERIFY, POL_EV_ENT_KEY, 22, POL_EV_T_BOOL, POL_EV_F_R, "verify")                  \
    X(POL_EV_CAP_ENCRYPT, POL_EV_ENT_KEY, 23, POL_EV_T_BOOL, POL_EV_F_R, "encrypt")                \
    X(POL_EV_CAP_DECRYPT, POL_EV_ENT_KEY, 24, POL_EV_T_BOOL, POL_EV_F_R, "decrypt")                \
    X(POL_EV_CAP_WRAP, POL_EV_ENT_KEY, 25, POL_EV_T_BOOL, POL_EV_F_R, "wrap")                      \
    X(POL_EV_CAP_UNWRAP, POL_EV_ENT_KEY, 26, POL_EV_T_BOOL, POL_EV_F_R, "unwrap")                  \
    X(POL_EV_CAP_DERIVE, POL_EV_ENT_KEY, 27, POL_EV_T_BOOL, POL_EV_F_R, "derive")                  \
    X(POL_EV_TOKEN_OBJECT, POL_EV_ENT_KEY, 28, POL_EV_T_BOOL, POL_EV_F_R, "token_object")          \
    X(POL_EV_PRIVATE, POL_EV_ENT_KEY, 29, POL_EV_T_BOOL, POL_EV_F_R, "private")                    \
    X(POL_EV_MODIFIABLE, POL_EV_ENT_KEY, 30, POL_EV_T_BOOL, POL_EV_F_R, "modifiable")              \
    X(POL_EV_COPYABLE, POL_EV_ENT_KEY, 31, POL_EV_T_BOOL, POL_EV_F_R, "copyable")                  \
    X(POL_EV_DESTROYABLE, POL_EV_ENT_KEY, 32, POL_EV_T_BOOL, POL_EV_F_R, "destroyable")            \
    X(POL_EV_KEY_TYPE, POL_EV_ENT_KEY, 33, POL_EV_T_INT, POL_EV_F_R, "key_type")                   \
    X(POL_EV_KCV, POL_EV_ENT_KEY, 34, POL_EV_T_BYTES, POL_EV_F_R, "kcv")                           \
    X(POL_EV_ALLOWED_MECH, POL_EV_ENT_KEY, 35, POL_EV_T_INT, POL_EV_F_R | POL_EV_F_M,              \
      "allowed_mechanism")                                                                         \
    X(POL_EV_INDEX_NAME, POL_EV_ENT_KEY, 36, POL_EV_T_UTF8, POL_EV_F_R, "index_name")              \
    X(POL_EV_ORIGIN, POL_EV_ENT_KEY, 37, POL_EV_T_UTF8, POL_EV_F_R, "origin")                      \
    X(POL_EV_KEK_NAME, POL_EV_ENT_KEY, 38, POL_EV_T_UTF8, 0, "kek_name")                           \
    X(POL_EV_BORN_ON_TOKEN, POL_EV_ENT_KEY, 39, POL_EV_T_BOOL, POL_EV_F_R, "born_on_token")        \
    X(POL_EV_COPYABLE_NOT_ENFORCED, POL_EV_ENT_KEY, 40, POL_EV_T_BOOL, POL_EV_F_R,                 \
      "copyable_not_enforced")

#endif
