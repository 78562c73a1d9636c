-- expect: load_error: must return a table
-- Returns a number instead of the policy table.
return 42
