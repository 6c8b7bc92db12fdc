# One cdx_add_test() line per suite (a plain list; append yours).
cdx_add_test(test_fixtures SOURCES test_fixtures.c LIBS cdx_base ${CMAKE_DL_LIBS})
cdx_add_test(test_hsm_tool SOURCES test_hsm_tool.c LIBS cdx_base PkgConfig::OPENSSL)
add_dependencies(test_hsm_tool cipherdex-hsm)
cdx_add_test(test_pkcs11 SOURCES test_pkcs11.c LIBS cdx_pkcs11)
add_dependencies(test_pkcs11 cdx_p11wrap)
