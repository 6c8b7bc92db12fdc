# The admin split holds at link time: the daemon contains none of the admin-only custody
# calls (key files, anything hsm_kek_*, listing, creating the attestation key; raw-byte import is the daemon's too, behind
# [hsm] allow_plaintext_import), and the admin tool does (so the
# check cannot pass vacuously). Run by ctest as test_pkcs11_admin_split:
#   cmake -DNM=nm -DDAEMON=path/cipherdexd -DTOOL=path/cipherdex-hsm -P check_admin_split.cmake
cmake_minimum_required(VERSION 3.13)
set(forbidden "^(hsm_index_key_import_file|hsm_key_file_read|hsm_kek_.*|hsm_key_list|hsm_b64_char|hsm_attest_key_create)$")
set(in_tool hsm_index_key_import hsm_index_key_import_file hsm_key_file_read hsm_kek_generate
    hsm_kek_import hsm_kek_destroy hsm_kek_name_valid hsm_key_list hsm_attest_key_create)

function(defined_symbols binary out)
  execute_process(COMMAND ${NM} --defined-only ${binary} OUTPUT_VARIABLE text
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} ${binary} failed (${rc})")
  endif()
  string(REGEX MATCHALL "[^\n]+" lines "${text}")
  set(names "")
  foreach(l IN LISTS lines)
    if(l MATCHES " ([A-Za-z]) ([A-Za-z0-9_.]+)$")
      list(APPEND names "${CMAKE_MATCH_2}")
    endif()
  endforeach()
  set(${out} "${names}" PARENT_SCOPE)
endfunction()

defined_symbols(${DAEMON} daemon_syms)
defined_symbols(${TOOL} tool_syms)
set(bad 0)
foreach(s IN LISTS daemon_syms)
  if(s MATCHES "${forbidden}")
    message(SEND_ERROR "${DAEMON} contains the admin-only symbol ${s}")
    set(bad 1)
  endif()
endforeach()
foreach(s IN LISTS in_tool)
  if(NOT s IN_LIST tool_syms)
    message(SEND_ERROR "${TOOL} lacks ${s}: the check would be vacuous")
    set(bad 1)
  endif()
endforeach()
if(bad)
  message(FATAL_ERROR "the admin custody split does not hold")
endif()
message(STATUS "cipherdexd has no symbol matching ${forbidden}")
