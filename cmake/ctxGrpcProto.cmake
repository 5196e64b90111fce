# gRPC code generation for the project's own tests, examples and benchmarks;
# never exported. Nothing generated is committed: protoc and grpc_cpp_plugin
# run at build time.
#
# ctx_grpc_proto(<target> <file.proto>): a static library <target> made of
# the messages and services of <file.proto>, generated into the build tree,
# whose headers (<name>.pb.h, <name>.grpc.pb.h) are on its users' include
# path as system headers (so the project's warnings stay off generated code).
function(ctx_grpc_proto target proto)
  get_filename_component(abs "${proto}" ABSOLUTE)
  get_filename_component(dir "${abs}" DIRECTORY)
  get_filename_component(name "${abs}" NAME_WE)
  # Under generated/, so that no glob for the directory's programs (examples/example_*) meets it.
  set(out "${CMAKE_CURRENT_BINARY_DIR}/generated/${target}")
  set(srcs "${out}/${name}.pb.cc" "${out}/${name}.grpc.pb.cc")
  add_custom_command(
    OUTPUT ${srcs} "${out}/${name}.pb.h" "${out}/${name}.grpc.pb.h"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${out}"
    COMMAND protobuf::protoc --cpp_out "${out}" --grpc_out "${out}"
            "--plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>" -I "${dir}" "${abs}"
    DEPENDS "${abs}"
    COMMENT "protoc + grpc_cpp_plugin: ${name}.proto"
    VERBATIM)
  add_library(${target} STATIC ${srcs})
  target_include_directories(${target} SYSTEM PUBLIC "${out}")
  target_link_libraries(${target} PUBLIC gRPC::grpc++ protobuf::libprotobuf)
  target_compile_features(${target} PUBLIC cxx_std_20)
endfunction()
