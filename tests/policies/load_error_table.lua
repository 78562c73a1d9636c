-- expect: load_error: error object is a table
-- Raises a table at load.
error({})

return { name = "load_error_table", score = function(offer) return offer.margin end }
