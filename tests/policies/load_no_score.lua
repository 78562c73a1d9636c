-- expect: load_error: needs a 'score' function
-- The table has no score function.
return { name = "load_no_score", eligible = function() return true end }
