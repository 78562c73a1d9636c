-- expect: load_error: 'eligible' must be a function
-- eligible is a boolean.
return { name = "load_bad_eligible", eligible = true, score = function(o) return o.margin end }
