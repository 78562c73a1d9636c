-- expect: load_error: needs a 'name' string
-- Returns a library proxy instead of its own table.
return nbx
