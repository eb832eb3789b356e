# Kiln.cmake: compile models with kiln as part of a CMake build (Ninja or Makefiles generators).
#
#   include(path/to/kiln/cmake/Kiln.cmake)
#   kiln_add_model(<name> CONFIG <kiln.yaml>
#                  [TARGETS <target>...]      # build only these targets of the config (default: all)
#                  [OUTPUT_DIR <dir>]         # default: ${CMAKE_CURRENT_BINARY_DIR}/kiln/<name>
#                  [ALL])                     # build it with the default target
#
# Adds a custom command running `kiln build` with a depfile, so the model is rebuilt exactly when a file
# it reads changes (the config, the ONNX model and its external data, calibration and validation data,
# device profiles) or when kiln itself changes, and a custom target <name>. Sets <name>_OUTPUT_DIR in the
# caller's scope: the artifacts are under <name>_OUTPUT_DIR/<target>/ (report.json, report.html and
# manifest.json beside them). The kiln executable is KILN_EXECUTABLE, or `kiln` found on PATH.
cmake_minimum_required(VERSION 3.20)

if(NOT KILN_EXECUTABLE)
  find_program(KILN_EXECUTABLE kiln REQUIRED)
endif()

function(kiln_add_model name)
  cmake_parse_arguments(PARSE_ARGV 1 KILN "ALL" "CONFIG;OUTPUT_DIR" "TARGETS")
  if(NOT KILN_CONFIG)
    message(FATAL_ERROR "kiln_add_model(${name}): CONFIG <kiln.yaml> is required")
  endif()
  if(KILN_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "kiln_add_model(${name}): unknown arguments ${KILN_UNPARSED_ARGUMENTS}")
  endif()
  get_filename_component(config "${KILN_CONFIG}" ABSOLUTE)
  if(NOT KILN_OUTPUT_DIR)
    set(KILN_OUTPUT_DIR "${CMAKE_CURRENT_BINARY_DIR}/kiln/${name}")
  endif()
  get_filename_component(out "${KILN_OUTPUT_DIR}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  set(only "")
  foreach(t IN LISTS KILN_TARGETS)
    list(APPEND only --target "${t}")
  endforeach()
  add_custom_command(
    OUTPUT "${out}/manifest.json"
    BYPRODUCTS "${out}/report.json"
    COMMAND "${KILN_EXECUTABLE}" build "${config}" --out-dir "${out}" --depfile "${out}.d" --quiet ${only}
    DEPENDS "${config}" "${KILN_EXECUTABLE}"
    DEPFILE "${out}.d"
    COMMENT "kiln: building ${name}"
    VERBATIM)
  if(KILN_ALL)
    add_custom_target(${name} ALL DEPENDS "${out}/manifest.json")
  else()
    add_custom_target(${name} DEPENDS "${out}/manifest.json")
  endif()
  set(${name}_OUTPUT_DIR "${out}" PARENT_SCOPE)
endfunction()
