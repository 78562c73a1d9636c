-- expect: load_error: attempt to index global 'io'
-- Reaches for io at load.
io.write('hello')

return { name = "load_escape_io", score = function(offer) return offer.margin end }
