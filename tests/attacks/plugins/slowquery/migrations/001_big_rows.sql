-- UP
-- 96 rows of 300,000 characters: a worst-case LIKE over them costs seconds in a few hundred SQLite operations.
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96)
INSERT INTO notes (body) SELECT replace(hex(zeroblob(150000)), '0', 'a') FROM n;
