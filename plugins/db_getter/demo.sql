-- Demo database for the db_getter plugin: `scores(name, score)` with the three classic rows
-- (Tom 630, Jack 589, Sam 567) and 100,000 generated ones (user000001 .. user100000) whose
-- scores are deterministic, so every build of demo.db holds the same data.
--
-- Works with the sqlite3 CLI (`sqlite3 demo.db < demo.sql`), Python's
-- `sqlite3.Connection.executescript` and rusqlite's `Connection::execute_batch`, and may be run
-- again on an existing database: it replaces the table.
BEGIN;

DROP TABLE IF EXISTS scores;

CREATE TABLE scores (
    name  TEXT PRIMARY KEY,
    score INTEGER NOT NULL
);

INSERT INTO scores (name, score) VALUES ('Tom', 630), ('Jack', 589), ('Sam', 567);

WITH RECURSIVE seq(n) AS (
    SELECT 1
    UNION ALL
    SELECT n + 1 FROM seq WHERE n < 100000
)
INSERT INTO scores (name, score)
SELECT printf('user%06d', n), (n * 7919 + 13) % 1000 FROM seq;

COMMIT;
