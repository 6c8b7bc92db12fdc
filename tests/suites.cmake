# One cdx_add_test() line per suite (a plain list; append yours).
cdx_add_test(test_fixtures SOURCES test_fixtures.c LIBS cdx_base ${CMAKE_DL_LIBS})
cdx_add_test(test_hsm_tool SOURCES test_hsm_tool.c LIBS cdx_policy cdx_pkcs11 cdx_base PkgConfig::OPENSSL)
cdx_add_test(test_config SOURCES test_config.c LIBS cdx_appconf)
# Typed principals and the access policy (policy/), the daemon's policy file (app_policy).
cdx_add_test(test_policy SOURCES test_policy.c LIBS cdx_daemon cdx_appconf cdx_policy)
# The audit trail's record chain (policy/pol_audit.c): every tamper case caught and named.
cdx_add_test(test_audit SOURCES test_audit.c LIBS cdx_policy PkgConfig::OPENSSL)
cdx_add_test(test_audit_writer SOURCES test_audit_writer.c LIBS cdx_daemon PkgConfig::OPENSSL)
# HSM key attestation (pkcs11/hsm_attest, policy/pol_evidence, appliance/app_attest): the statement
# against forged, replayed, stale, edited and wrong-key variants (C and openssl CLI), pkcs11-tool's
# view of the same key, cipherdex-hsm attest-key/attest verify, and attest through cipherdexd.
cdx_add_test(test_attest SOURCES test_attest.c LIBS cdx_daemon cdx_fx_client cdx_policy cdx_pkcs11_admin cdx_pkcs11
             PkgConfig::OPENSSL TIMEOUT 600)
add_dependencies(test_attest cipherdex-hsm cipherdex cipherdexd)
cdx_add_test(test_metrics SOURCES test_metrics.c LIBS cdx_appops)
cdx_add_test(test_pool SOURCES test_pool.c LIBS cdx_appops)
cdx_add_test(test_flow SOURCES test_flow.c LIBS cdx_appops)
cdx_add_test(test_log SOURCES test_log.c LIBS cdx_base PkgConfig::JANSSON)
cdx_add_test(test_daemon SOURCES test_daemon.c LIBS cdx_base TIMEOUT 300)
add_dependencies(test_daemon cipherdexd)
add_dependencies(test_hsm_tool cipherdex-hsm)
cdx_add_test(test_pkcs11 SOURCES test_pkcs11.c LIBS cdx_pkcs11_admin cdx_pkcs11)
add_dependencies(test_pkcs11 cdx_p11wrap)
if(NOT TARGET PkgConfig::JANSSON)
  pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
endif()
# Filters and metadata JSON (engine/eng_filter, eng_json), one test per docs/FILTERS.md row.
cdx_add_test(test_filter SOURCES test_filter.c LIBS cdx_engine PkgConfig::JANSSON)
target_compile_definitions(test_filter PRIVATE CDX_FILTERS_MD="${CMAKE_SOURCE_DIR}/docs/FILTERS.md")
# Numeric kernels (engine/eng_dist, eng_sq8, eng_topk, eng_kmeans, eng_probe, eng_screen), linked
# from cdx_engine. test_math_scalar reruns it with CDX_SIMD=scalar (the fallback selected at init).
# Their rates: tests/bench/bench_math (not a test).
cdx_add_test(test_math SOURCES test_math.c LIBS cdx_engine m)
add_test(NAME test_math_scalar COMMAND test_math)
set_tests_properties(test_math_scalar PROPERTIES TIMEOUT 600 ENVIRONMENT "CDX_SIMD=scalar"
  FIXTURES_REQUIRED cdx_tmp)
cdx_add_test(test_store SOURCES test_store.c LIBS cdx_fx_engine)
cdx_add_test(test_store_redis SOURCES test_store_redis.c LIBS cdx_fx_engine)
# The engine through eng.h, one suite per concern, each run against the memory store and Redis
# on a throwaway token (tests/fixtures/fx_engine.h).
foreach(concern lifecycle write query hostile crash concurrency rotate)
  cdx_add_test(test_engine_${concern} SOURCES test_engine_${concern}.c LIBS cdx_fx_engine TIMEOUT 900)
endforeach()
target_link_libraries(test_engine_lifecycle PRIVATE cdx_pkcs11_admin) # KEK import, key listing
target_link_libraries(test_engine_rotate PRIVATE cdx_pkcs11_admin) # KEK import (--new-key on unwrapped keys)
# Store maintenance (engine/eng_maint.h): readers across a sweep, and the bounded-store workload
# (reliability review F3). CDX_RELIABILITY_FULL=1 runs its long mode (./run reliability).
cdx_add_test(test_engine_maint SOURCES test_engine_maint.c LIBS cdx_fx_engine TIMEOUT 900)
# Engine concepts tested directly, beneath the engine suites: the record envelope (with the worked
# vector of docs/RECORDS.md, read from the document) and the plaintext codecs.
cdx_add_test(test_record SOURCES test_record.c LIBS cdx_fx_engine cdx_pkcs11_admin)
target_compile_definitions(test_record PRIVATE CDX_RECORDS_MD="${CMAKE_SOURCE_DIR}/docs/RECORDS.md")
# The record plaintext codecs (catalog, head, manifest, id-map bucket, search block).
cdx_add_test(test_codec SOURCES test_codec.c LIBS cdx_engine)
# The secret arena and the secret-file reader (pkcs11/hsm_secmem, hsm_secfile).
cdx_add_test(test_secmem SOURCES test_secmem.c LIBS cdx_pkcs11)
# Server TLS (appliance/app_tls) in real handshakes against a throwaway PKI (fx_pki).
cdx_add_test(test_tls SOURCES test_tls.c LIBS cdx_apptls)
add_dependencies(test_tls fx_pki_tool)
# Wire layer (proto/): frame codec, unpack budget, request validation, Python client from the .proto.
cdx_add_test(test_utf8 SOURCES test_utf8.c LIBS cdx_base)
cdx_add_test(test_frame SOURCES test_frame.c LIBS cdx_wire)
cdx_add_test(test_wire SOURCES test_wire.c LIBS cdx_wire m)
cdx_add_test(test_wire_roundtrip SOURCES test_wire_roundtrip.c LIBS cdx_wire m)
target_compile_definitions(test_wire_roundtrip
                           PRIVATE CDX_PROTO_FILE="${CMAKE_SOURCE_DIR}/proto/cipherdex.proto")
# Fuzz targets (tests/fuzz/) on fuzz_main.c, the shared replay driver: the wire layer, filter and
# metadata JSON, the configuration loader, the record plaintext decoders, the sans-IO RESP reader
# the Redis store reads bulk fetches with (engine/eng_redis_resp.c), the bounded reply callbacks
# it gives hiredis' reader (engine/eng_redis_reply.c), the access policy file and the audit
# trail's lines (policy/), attestation statements (policy/pol_evidence). Each writes its seeds and
# replays them.
# With CDX_LIBFUZZER (./run fuzz) the same targets are libFuzzer binaries instead.
foreach(target wire filter ini codec resp redis_reply policy evidence)
  if(CDX_LIBFUZZER)
    add_executable(fuzz_${target} fuzz/fuzz_${target}.c)
    target_compile_definitions(fuzz_${target} PRIVATE CDX_LIBFUZZER)
    target_link_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
  else()
    add_executable(fuzz_${target} fuzz/fuzz_${target}.c fuzz/fuzz_main.c)
    add_test(NAME fuzz_${target}_seeds
             COMMAND fuzz_${target} --seeds ${CDX_TEST_TMP}/fuzz-${target}-seeds ${CDX_TEST_TMP}/fuzz-${target}-seeds)
    set_tests_properties(fuzz_${target}_seeds PROPERTIES TIMEOUT 300 FIXTURES_REQUIRED cdx_tmp)
  endif()
  target_include_directories(fuzz_${target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
endforeach()
target_link_libraries(fuzz_filter PRIVATE cdx_engine)
target_link_libraries(fuzz_ini PRIVATE cdx_appconf)
target_link_libraries(fuzz_policy PRIVATE cdx_appconf cdx_policy PkgConfig::OPENSSL)
target_link_libraries(fuzz_evidence PRIVATE cdx_policy PkgConfig::OPENSSL)
target_link_libraries(fuzz_codec PRIVATE cdx_engine)
target_link_libraries(fuzz_redis_reply PRIVATE cdx_engine)
target_link_libraries(fuzz_wire PRIVATE cdx_wire)
target_sources(fuzz_resp PRIVATE ${CMAKE_SOURCE_DIR}/engine/eng_redis_resp.c)
target_include_directories(fuzz_resp PRIVATE ${CMAKE_SOURCE_DIR}/engine)
# Sans-IO RESP parser the Redis store reads GETRANGE replies with.
cdx_add_test(test_resp SOURCES test_resp.c LIBS cdx_engine)

# The appliance end to end: cipherdexd over mutual TLS with a token, Redis and a throwaway PKI.
cdx_add_test(test_appliance SOURCES test_appliance.c LIBS cdx_client TIMEOUT 600)
add_dependencies(test_appliance cipherdexd)
# A lost tail at the appliance level: ROLLBACK_DETECTED, list_indexes, /healthz, accept_rollback
# through the wire and the CLI without a restart (reliability review F2).
cdx_add_test(test_rollback SOURCES test_rollback.c LIBS cdx_fx_client TIMEOUT 300)
add_dependencies(test_rollback cipherdexd cipherdex)
# The access policy through the wire (docs/POLICY.md): every principal x operation, typed
# principals, tenants apart, the filtered index list, refusal log lines, SIGHUP reload.
cdx_add_test(test_access SOURCES test_access.c LIBS cdx_fx_client TIMEOUT 300)
add_dependencies(test_access cipherdexd)
cdx_add_test(test_audit_trail SOURCES test_audit_trail.c LIBS cdx_fx_client TIMEOUT 300)
add_dependencies(test_audit_trail cipherdexd cipherdex-hsm)
# Key rotation through the appliance under query and upsert load (docs/ROTATION.md).
cdx_add_test(test_rotate_load SOURCES test_rotate_load.c LIBS cdx_fx_client cdx_engine TIMEOUT 300)
add_dependencies(test_rotate_load cipherdexd)
# The Python package (packaging/python, docs/PYTHON.md) pip-installed offline into a venv, against
# a dev stack: every operation, its error classes, the wire contract, retries across daemon kills.
add_test(NAME test_python_client
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/clients/python/run_test.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
set_tests_properties(test_python_client PROPERTIES TIMEOUT 300 FIXTURES_REQUIRED cdx_tmp
                     ENVIRONMENT "CDX_TEST_TMP=${CDX_TEST_TMP}")
# The whole lifecycle through the CLI, against a dev stack.
add_test(NAME test_cli
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/clients/cli/run_test.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
set_tests_properties(test_cli PROPERTIES TIMEOUT 300 FIXTURES_REQUIRED cdx_tmp
                     ENVIRONMENT "CDX_TEST_TMP=${CDX_TEST_TMP}")
# Admin-only custody (pkcs11/hsm_admin.h, cdx_pkcs11_admin) is absent from the daemon's binary.
add_test(NAME test_pkcs11_admin_split
         COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DDAEMON=$<TARGET_FILE:cipherdexd>
                 -DTOOL=$<TARGET_FILE:cipherdex-hsm> -P ${CMAKE_SOURCE_DIR}/tests/check_admin_split.cmake)
# The Redis backend's password_file and AUTH (secret file reader, locked memory) against a throwaway redis-server.
cdx_add_test(test_store_redis_auth SOURCES test_store_redis_auth.c LIBS cdx_engine)
# Connections and recovery at the daemon's edge (raw-socket floods, descriptors past 1024, EMFILE,
# the descriptor budget) and the C client's retry helper across daemon kills.
cdx_add_test(test_conn SOURCES test_conn.c LIBS cdx_client cdx_appops TIMEOUT 300)
add_dependencies(test_conn cipherdexd)
# Memory bounds under hostile clients (docs/WIRE.md, "Memory bounds"): a live cipherdexd's RSS
# with a get and a query far larger than a frame, clients that never read, repeated ids.
cdx_add_test(test_hostile SOURCES test_hostile.c LIBS cdx_client TIMEOUT 300)
add_dependencies(test_hostile cipherdexd)
# Custody through p11-kit remoting (network-HSM simulation): a `p11-kit server` on a scratch
# socket exporting a SoftHSM token, p11-kit-client.so in the test (no unwrap: p11-kit's RPC
# does not carry CKM_AES_KEY_WRAP*).
cdx_add_test(test_p11kit SOURCES test_p11kit.c LIBS cdx_pkcs11_admin cdx_pkcs11 PkgConfig::OPENSSL)
# The custody suite any module must pass (the HSM matrix runs it on every module; here SoftHSM).
cdx_add_test(test_custody_module SOURCES test_custody_module.c
             LIBS cdx_pkcs11_admin cdx_pkcs11 PkgConfig::OPENSSL Threads::Threads)
cdx_add_test(test_engine_erase SOURCES test_engine_erase.c LIBS cdx_fx_engine TIMEOUT 300)
