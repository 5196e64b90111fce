# Warnings for the project's own tests, examples and benchmarks; never exported.
add_library(ctx_dev_flags INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(ctx_dev_flags INTERFACE -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion
                                                 -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Werror=return-type)
elseif(MSVC)
  target_compile_options(ctx_dev_flags INTERFACE /W4 /permissive-)
endif()
