-- expect: load_error: '=' expected
-- A syntax error: the message gives file and line.
local policy = { name = "load_syntax_error" }
policy.score function(offer) return 1 end
return policy
