# Warnings for the project's own tests, examples and benchmarks; never exported.
add_library(ctx_dev_flags INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(ctx_dev_flags INTERFACE -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion
                                                 -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Werror=return-type)
elseif(MSVC)
  target_compile_options(ctx_dev_flags INTERFACE /W4 /permissive-)
endif()
# CI turns warnings into errors (CTX_WERROR=ON in its environment, which the
# presets pass on); users building the tests see warnings, never a failed build.
option(CTX_WERROR "Warnings are errors in ctx's own tests, examples and benchmarks" OFF)
if(CTX_WERROR)
  target_compile_options(ctx_dev_flags INTERFACE $<IF:$<CXX_COMPILER_ID:MSVC>,/WX,-Werror>)
endif()

# ctx_preset_labels(<out> <presets...>): the ctest labels that keep a test out
# of the presets it is not listed for. Every test runs in `dev` (the README's
# test command); by default also under `asan` and `tsan`. A test that would
# only repeat there what another preset covers (a real server's round trips,
# say) lists fewer: PRESETS dev asan. The asan and tsan test presets exclude
# the labels no-asan and no-tsan.
function(ctx_preset_labels out)
  set(presets ${ARGN})
  if(NOT presets)
    set(presets dev asan tsan)
  endif()
  if(NOT "dev" IN_LIST presets)
    message(FATAL_ERROR "PRESETS ${presets}: every test runs in dev, the README's test command")
  endif()
  set(labels "")
  foreach(p asan tsan)
    if(NOT p IN_LIST presets)
      list(APPEND labels no-${p})
    endif()
  endforeach()
  set(${out} "${labels}" PARENT_SCOPE)
endfunction()
