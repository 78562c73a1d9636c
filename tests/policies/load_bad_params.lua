-- expect: load_error: 'params' must be a table
-- params is a string.
return { name = "load_bad_params", params = "fast", score = function(o) return o.margin end }
