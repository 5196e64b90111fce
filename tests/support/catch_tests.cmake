# SPDX-License-Identifier: MIT
# ctest entries for Catch2 test programs: one per test case, and a check that
# the two counts agree. Run by tests/CMakeLists.txt, in script mode:
#
#   cmake -D mode=discover -D exe=<program> -D list=<v2|v3> -D out=<file> -D props=<text> -P catch_tests.cmake
#     After each build of a test program: writes to `out` one add_test() per
#     test case the program lists, named as the test case, running that one
#     test case with --warn NoTests (Catch2 then exits 2 when the name matched
#     no test case, so such an entry fails instead of passing); `props` is
#     the text that follows PROPERTIES in each set_tests_properties(), with
#     each ';' written as <ctx:semi> (a -D value cannot hold one).
#
#   cmake -D mode=check -D programs=<file> -D list=<v2|v3> -D ctest=<ctest> -P catch_tests.cmake
#     A test (in the test directory): every test case of every program listed
#     in `programs` (one path a line) is exactly one ctest entry, and every
#     ctest entry that runs one of those programs is one of its test cases.
#
# Catch2 v2's own catch_discover_tests() turns the program's output into a
# CMake list, which splits a test name at ';' into two entries that match
# nothing and pass. Here a name never goes through a CMake list whole: ';',
# '[', ']' and '\' (list syntax) travel as placeholders until written out.
cmake_minimum_required(VERSION 3.23)

function(ctx_encode text out)  # a name -> a CMake list element that stands for it
  string(REPLACE "\\" "<ctx:bs>" text "${text}")
  string(REPLACE ";" "<ctx:semi>" text "${text}")
  string(REPLACE "[" "<ctx:lb>" text "${text}")
  string(REPLACE "]" "<ctx:rb>" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

function(ctx_decode text out)
  string(REPLACE "<ctx:bs>" "\\" text "${text}")
  string(REPLACE "<ctx:semi>" ";" text "${text}")
  string(REPLACE "<ctx:lb>" "[" text "${text}")
  string(REPLACE "<ctx:rb>" "]" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# The test case names of program `exe`, encoded, as a list in `out`.
function(ctx_list_test_cases exe out)
  if(list STREQUAL "v3")
    set(list_args --list-tests --verbosity quiet)
  else()
    set(list_args --list-test-names-only)
  endif()
  execute_process(COMMAND "${exe}" ${list_args} OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE rc)
  # v2 exits with the number of test cases it listed; v3 with 0; anything else is a crash.
  if(NOT rc MATCHES "^[0-9]+$" OR (list STREQUAL "v3" AND NOT rc EQUAL 0))
    message(FATAL_ERROR "${exe} ${list_args} failed (${rc}):\n${output}${errors}")
  endif()
  ctx_encode("${output}" output)
  string(REPLACE "\n" ";" lines "${output}")
  list(REMOVE_ITEM lines "")
  set(${out} "${lines}" PARENT_SCOPE)
endfunction()

if(mode STREQUAL "discover")
  ctx_decode("${props}" properties)
  ctx_list_test_cases("${exe}" cases)
  if(NOT cases)
    message(FATAL_ERROR "${exe} lists no test case")
  endif()
  set(script "")
  foreach(encoded IN LISTS cases)
    ctx_decode("${encoded}" name)
    # A test spec is a pattern: these names cannot select exactly one test case.
    if(name MATCHES "^[ ~*]|^exclude:|[* ]$|]==]")
      message(FATAL_ERROR "${exe}: the test case \"${name}\" cannot be run alone by name: rename it")
    endif()
    set(spec "${name}")
    foreach(c "\\" "," "[" "]" "\"")  # syntax of Catch2's test spec parser, escaped
      string(REPLACE "${c}" "\\${c}" spec "${spec}")
    endforeach()
    string(APPEND script "add_test([==[${name}]==] [==[${exe}]==] [==[${spec}]==] --warn NoTests)\n"
           "set_tests_properties([==[${name}]==] PROPERTIES ${properties})\n")
  endforeach()
  file(WRITE "${out}" "${script}")

elseif(mode STREQUAL "check")
  execute_process(COMMAND "${ctest}" --show-only=json-v1 OUTPUT_VARIABLE json RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ctest --show-only=json-v1 failed (${rc})")
  endif()
  # program -> encoded names of the ctest entries that run it
  string(JSON n LENGTH "${json}" tests)
  set(all_programs "")
  if(n GREATER 0)
    math(EXPR last "${n} - 1")
    foreach(i RANGE ${last})
      string(JSON name GET "${json}" tests ${i} name)
      string(JSON program ERROR_VARIABLE no_command GET "${json}" tests ${i} command 0)
      if(no_command)
        continue()
      endif()
      string(SHA1 key "${program}")
      ctx_encode("${name}" name)
      list(APPEND entries_${key} "${name}")
    endforeach()
  endif()
  file(STRINGS "${programs}" program_list)
  set(failed 0)
  set(total_cases 0)
  set(total_entries 0)
  foreach(program IN LISTS program_list)
    string(SHA1 key "${program}")
    ctx_list_test_cases("${program}" cases)
    list(LENGTH cases n_cases)
    list(LENGTH entries_${key} n_entries)
    math(EXPR total_cases "${total_cases} + ${n_cases}")
    math(EXPR total_entries "${total_entries} + ${n_entries}")
    set(no_entry ${cases})
    set(no_case ${entries_${key}})
    if(no_entry)
      list(REMOVE_ITEM no_entry ${entries_${key}})
    endif()
    if(no_case)
      list(REMOVE_ITEM no_case ${cases})
    endif()
    if(NOT n_cases EQUAL n_entries OR no_entry OR no_case)
      set(failed 1)
      foreach(l no_entry no_case)  # one name a line: the separators first, while names hold placeholders
        if(NOT ${l})
          set(${l} "(none)")
        endif()
        string(REPLACE ";" "\n    " ${l} "${${l}}")
        ctx_decode("${${l}}" ${l})
      endforeach()
      message(SEND_ERROR "${program}: ${n_cases} test cases but ${n_entries} ctest entries\n"
                         "  test cases without an entry:\n    ${no_entry}\n"
                         "  entries that are no test case:\n    ${no_case}")
    endif()
  endforeach()
  if(failed)
    message(FATAL_ERROR "the ctest entries of the Catch2 programs do not match their test cases")
  endif()
  list(LENGTH program_list n_programs)
  message(STATUS "${total_cases} Catch2 test cases in ${n_programs} programs, one ctest entry each")
else()
  message(FATAL_ERROR "catch_tests.cmake: mode must be discover or check")
endif()
