# Makes the imported target hiredis::hiredis exist when hiredis is installed.
# Upstream hiredis >= 1.0 installs it (package "hiredis"). Debian's 0.14 ships
# a package "Hiredis" that only sets variables, and whose version file fails
# unless a version is asked for: the target is made here from its variables.
# Included by CMakeLists.txt and by the installed ctxConfig.cmake.
if(NOT TARGET hiredis::hiredis)
  find_package(hiredis CONFIG QUIET)
endif()
if(NOT TARGET hiredis::hiredis)
  find_package(Hiredis 0.14 CONFIG QUIET)
  if(Hiredis_FOUND AND HIREDIS_LIBRARIES AND HIREDIS_INCLUDE_DIRS)
    add_library(hiredis::hiredis UNKNOWN IMPORTED)
    set_target_properties(hiredis::hiredis PROPERTIES
                          IMPORTED_LOCATION "${HIREDIS_LIBRARIES}"
                          INTERFACE_INCLUDE_DIRECTORIES "${HIREDIS_INCLUDE_DIRS}")
  endif()
endif()
