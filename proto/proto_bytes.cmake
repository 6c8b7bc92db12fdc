# proto_bytes.cmake - build-time copy of a .proto for the server's C code.
#
#   cmake -DIN=cipherdex.proto -DOUT=<build>/cipherdex.proto -DHDR=<build>/wire_text_fields.h
#         -P proto_bytes.cmake
#
# Writes OUT: IN with every `string` field declared `bytes` (the same wire
# format, but protobuf-c then keeps exact lengths, so the server can reject
# NUL and invalid UTF-8 instead of truncating at the first NUL). Writes HDR:
# WIRE_TEXT_FIELDS(X), one X("pkg.Message", "field") per field converted, so
# the validator knows which bytes fields must hold UTF-8 text.
#
# Only top-level messages are supported (the schema has no nested ones); a
# `string` anywhere else (map keys, nested messages) stops the build.
foreach(v IN ITEMS IN OUT HDR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "proto_bytes.cmake: -D${v}= is required")
  endif()
endforeach()

file(READ "${IN}" text)
# One list element per line: protect semicolons (CMake's list separator) first.
string(REPLACE ";" "@SEMI@" text "${text}")
string(REPLACE "\n" ";" lines "${text}")

set(pkg "")
set(msg "")
set(depth 0)
set(out "")
set(fields "")
foreach(line IN LISTS lines)
  # Strip comments for the analysis (the copy keeps them).
  string(REGEX REPLACE "//.*$" "" code "${line}")
  if(code MATCHES "^[ \t]*package[ \t]+([A-Za-z0-9_.]+)")
    set(pkg "${CMAKE_MATCH_1}")
  endif()
  if(code MATCHES "^[ \t]*message[ \t]+([A-Za-z0-9_]+)")
    if(NOT depth EQUAL 0)
      message(FATAL_ERROR "proto_bytes.cmake: nested message ${CMAKE_MATCH_1} is not supported")
    endif()
    set(msg "${CMAKE_MATCH_1}")
  endif()
  string(REGEX MATCHALL "{" opens "${code}")
  string(REGEX MATCHALL "}" closes "${code}")
  list(LENGTH opens no)
  list(LENGTH closes nc)
  math(EXPR depth "${depth} + ${no} - ${nc}")
  if(code MATCHES "^([ \t]*(repeated[ \t]+)?)string([ \t]+)([A-Za-z_][A-Za-z0-9_]*)([ \t]*=.*)$")
    if(msg STREQUAL "" OR depth LESS 1)
      message(FATAL_ERROR "proto_bytes.cmake: string field outside a message: ${line}")
    endif()
    set(name "${CMAKE_MATCH_4}")
    string(REGEX REPLACE "^([ \t]*(repeated[ \t]+)?)string([ \t]+)" "\\1bytes\\3" line "${line}")
    string(APPEND fields "    X(\"${pkg}.${msg}\", \"${name}\") \\\n")
  elseif(code MATCHES "(^|[^A-Za-z0-9_])string([^A-Za-z0-9_]|$)")
    message(FATAL_ERROR "proto_bytes.cmake: unsupported use of string: ${line}")
  endif()
  if(depth EQUAL 0)
    set(msg "")
  endif()
  list(APPEND out "${line}")
endforeach()

string(REPLACE ";" "\n" out "${out}")
string(REPLACE "@SEMI@" ";" out "${out}")
set(banner "// GENERATED at build time from ${IN} by proto_bytes.cmake: do not edit.\n// Every string field is declared bytes here (same wire format).\n")
file(WRITE "${OUT}.tmp" "${banner}${out}")
file(WRITE "${HDR}.tmp"
  "/* GENERATED at build time from ${IN} by proto_bytes.cmake: do not edit. */\n"
  "/* The bytes fields that are `string` in the contract (UTF-8 text, no NUL). */\n"
  "#define WIRE_TEXT_FIELDS(X) \\\n${fields}\n")
# Touch the outputs only when they change (keeps rebuilds minimal).
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(COPY_FILE "${HDR}.tmp" "${HDR}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp" "${HDR}.tmp")
