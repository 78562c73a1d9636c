/*
 * sandbox_lua.h: core/sandbox.lua, compiled into the library (the C file is
 * generated at build time by cmake/embed.cmake).
 */
#ifndef NBX_SANDBOX_LUA_H
#define NBX_SANDBOX_LUA_H

#include <stddef.h>

extern const char nbx_sandbox_lua[];
extern const size_t nbx_sandbox_lua_len;

#endif /* NBX_SANDBOX_LUA_H */
