//! The aliases file (aliases(5), as Postfix and sendmail read it): parsing, `:include:` files and expansion.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// How deeply `:include:` files may include further files.
const MAX_INCLUDE_DEPTH: usize = 5;

/// How many aliases deep an expansion may go before it gives up on that path.
const MAX_EXPANSION_DEPTH: usize = 20;

/// One target of an alias.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A local user name (lower-cased), or a name that is itself an alias (expansion resolves it).
    Local(String),
    /// A full address with a domain, `user@example.org` (kept as written).
    Address(String),
    /// `|command` — a pipe to a command; holds the command line after the `|`, trimmed.
    Command(String),
    /// `/path/to/file` — append to a file; holds the path as written.
    File(String),
}

/// What an alias lists, as parsed: a name or address that expansion may resolve further, or a final target.
#[derive(Clone, Debug)]
enum Item {
    /// A lower-cased local name: an alias if one is defined, else a local user.
    Name(String),
    /// An address: expanded like a name when its domain is local, else passed through.
    Address(String),
    /// A target that expansion passes through unchanged (commands, files, `\user` and `\user@domain`).
    Final(Target),
}

/// The aliases of a host: lower-cased alias names and what each one lists, with `:include:` files read in.
///
/// A name defined twice is an error that names both lines.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    map: HashMap<String, Vec<Item>>,
}

/// A problem in an aliases file, naming the file and the line: `/etc/aliases:12: missing ':' after the alias name`.
#[derive(Debug)]
pub struct AliasError {
    origin: String,
    line: Option<usize>,
    message: String,
}

/// The final targets of an alias and the problems met on the way (loops, too deep), for logging.
///
/// An empty `targets` means there is nothing to deliver to: every path looped, or an `:include:` file was empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expansion {
    /// The final targets, without duplicates, in the order first met.
    pub targets: Vec<Target>,
    /// One line per problem met (a loop, a path too deep), for logging.
    pub problems: Vec<String>,
}

impl AliasError {
    fn at(origin: &str, line: usize, message: String) -> AliasError {
        AliasError {
            origin: origin.to_string(),
            line: Some(line),
            message,
        }
    }
}

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for AliasError {}

impl Aliases {
    /// The aliases file the configuration names (`aliases`), or none.
    pub fn configured(config: &Config) -> Result<Aliases, AliasError> {
        match &config.aliases {
            Some(path) => Aliases::load(path),
            None => Ok(Aliases::empty()),
        }
    }

    /// Whether some alias lists the final target `target`: the privileged helper runs no other command and
    /// opens no other file.
    pub fn lists(&self, target: &Target) -> bool {
        self.map
            .values()
            .flatten()
            .any(|item| matches!(item, Item::Final(t) if t == target))
    }

    /// Reads and parses the aliases file at `path`, with the `:include:` files it names.
    pub fn load(path: &Path) -> Result<Aliases, AliasError> {
        let origin = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|error| AliasError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read: {error}"),
        })?;
        Aliases::parse(&text, &origin)
    }

    /// Parses the text of an aliases file; `origin` names the file in errors, with the line where the entry
    /// starts. `:include:` paths are read now, as written: absolute, or relative to the current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Aliases, AliasError> {
        let mut map = HashMap::new();
        let mut defined_on = HashMap::new();
        for entry in entries(text, origin)? {
            let error = |message| AliasError::at(origin, entry.line, message);
            let (name, list) = split_name(&entry.text).map_err(error)?;
            if let Some(first) = defined_on.insert(name.clone(), entry.line) {
                return Err(error(format!(
                    "alias '{name}' is already defined on line {first}"
                )));
            }
            if split_list(list).map_err(error)?.is_empty() {
                return Err(error(format!("alias '{name}' has no targets")));
            }
            let mut items = Vec::new();
            read_items(list, &mut Vec::new(), &mut items).map_err(error)?;
            map.insert(name, items);
        }
        Ok(Aliases { map })
    }

    /// No aliases at all: every name expands to itself.
    pub fn empty() -> Aliases {
        Aliases::default()
    }

    /// How many aliases the file defines.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `name` (any case) is an alias.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(&name.to_lowercase())
    }

    /// Expands `name` recursively to its final targets: local users that are not aliases themselves, addresses,
    /// commands and files. A name that is not an alias expands to itself (Local). An alias reached again
    /// through a loop contributes nothing more on that path and the loop is reported; an alias that names
    /// itself directly (`root: root, bob`) delivers to that local user, as sendmail does. Duplicates are
    /// removed, keeping the order of first occurrence, and paths deeper than 20 aliases are cut off and reported.
    pub fn expand(&self, name: &str) -> Expansion {
        self.expand_local(name, &|_| None)
    }

    /// Like [`Aliases::expand`], and an address target in a local domain (`local_part` returns its local part,
    /// None for any other address) expands like the name it holds: with `postmaster: webmaster@localhost`,
    /// postmaster reaches the targets of the alias webmaster, and a loop through such addresses is found and
    /// reported like any other.
    pub fn expand_local(
        &self,
        name: &str,
        local_part: &dyn Fn(&str) -> Option<String>,
    ) -> Expansion {
        let mut walk = Walk::default();
        walk.visit(self, &name.to_lowercase(), local_part);
        Expansion {
            targets: walk.targets,
            problems: walk.problems,
        }
    }
}

/// One logical line of the aliases file: an entry with its continuation lines joined.
struct Entry {
    line: usize,
    text: String,
}

/// Splits the file into entries: comment lines are skipped, a line starting with white space continues the
/// entry before it, and a blank line ends it.
fn entries(text: &str, origin: &str) -> Result<Vec<Entry>, AliasError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut open = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            open = false;
        } else if trimmed.starts_with('#') {
            continue;
        } else if line.starts_with(char::is_whitespace) {
            match entries.last_mut() {
                Some(entry) if open => {
                    entry.text.push(' ');
                    entry.text.push_str(trimmed);
                }
                _ => {
                    let message = "continuation line without an alias before it".to_string();
                    return Err(AliasError::at(origin, index + 1, message));
                }
            }
        } else {
            entries.push(Entry {
                line: index + 1,
                text: trimmed.to_string(),
            });
            open = true;
        }
    }
    Ok(entries)
}

/// Splits an entry into its lower-cased name and the text of its target list after the `:`.
fn split_name(text: &str) -> Result<(String, &str), String> {
    let (name, rest) = match text.strip_prefix('"') {
        Some(quoted) => {
            let end = closing_quote(quoted).ok_or("unterminated quote in the alias name")?;
            (unescape(&quoted[..end]), quoted[end + 1..].trim_start())
        }
        None => {
            let end = text.find(':').ok_or("missing ':' after the alias name")?;
            let name = text[..end].trim_end();
            if name.contains(char::is_whitespace) {
                return Err(format!(
                    "alias name '{name}' contains white space (quote it)"
                ));
            }
            (name.to_string(), &text[end..])
        }
    };
    let list = rest
        .strip_prefix(':')
        .ok_or("missing ':' after the alias name")?;
    if name.is_empty() {
        return Err("empty alias name".to_string());
    }
    if name.contains('@') {
        return Err(format!(
            "alias name '{name}' contains '@' (alias names are local parts)"
        ));
    }
    Ok((name.to_lowercase(), list))
}

/// Parses a comma-separated target list into `items`, reading `:include:` files; `includes` holds the files
/// being read, outermost first.
fn read_items(
    list: &str,
    includes: &mut Vec<PathBuf>,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    for raw in split_list(list)? {
        let (text, quoted) = unquote(raw);
        match strip_include(&text) {
            Some(path) => read_include(path, includes, items)?,
            None => items.push(classify(&text, quoted)?),
        }
    }
    Ok(())
}

/// The path of an `:include:` target (the keyword in any case), or None for any other target.
fn strip_include(text: &str) -> Option<&str> {
    const KEYWORD: &str = ":include:";
    let head = text.get(..KEYWORD.len())?;
    head.eq_ignore_ascii_case(KEYWORD)
        .then(|| text[KEYWORD.len()..].trim())
}

/// Reads the targets of an `:include:` file: comma- or newline-separated, with `#` comment lines.
fn read_include(
    path: &str,
    includes: &mut Vec<PathBuf>,
    items: &mut Vec<Item>,
) -> Result<(), String> {
    if path.is_empty() {
        return Err(":include: without a file name".to_string());
    }
    if includes.len() == MAX_INCLUDE_DEPTH {
        return Err(format!(
            ":include:{path} nests includes deeper than {MAX_INCLUDE_DEPTH}"
        ));
    }
    let unreadable = |error: std::io::Error| format!("cannot read :include:{path}: {error}");
    let real = fs::canonicalize(path).map_err(unreadable)?;
    if includes.contains(&real) {
        return Err(format!(":include:{path} includes itself (an include loop)"));
    }
    let text = fs::read_to_string(&real).map_err(unreadable)?;
    includes.push(real);
    for (index, line) in text.lines().enumerate() {
        if !line.trim_start().starts_with('#') {
            read_items(line, includes, items)
                .map_err(|error| format!("in {path}:{}: {error}", index + 1))?;
        }
    }
    includes.pop();
    Ok(())
}

/// Splits `text` at the commas outside quotes; the parts are trimmed and empty ones dropped.
fn split_list(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote".to_string());
    }
    parts.push(&text[start..]);
    Ok(parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect())
}

/// The byte index of the first `"` in `text` that no backslash escapes.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(index),
            _ => {}
        }
    }
    None
}

/// The inside of a quoted string with its backslash escapes resolved.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// A target without its quotes when it is one quoted string (and whether it was); otherwise as written.
fn unquote(raw: &str) -> (String, bool) {
    match raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) if closing_quote(inner).is_none() => (unescape(inner), true),
        _ => (raw.to_string(), false),
    }
}

/// What a target's text means: `|command`, `/file`, `user@domain`, `\user` (never expanded) or a name.
fn classify(text: &str, quoted: bool) -> Result<Item, String> {
    if let Some(command) = text.strip_prefix('|') {
        let command = command.trim();
        if command.is_empty() {
            return Err("empty command after '|'".to_string());
        }
        return Ok(Item::Final(Target::Command(command.to_string())));
    }
    if text.starts_with('/') {
        return Ok(Item::Final(Target::File(text.to_string())));
    }
    let (name, escaped) = match text.strip_prefix('\\') {
        Some(name) => (name, true),
        None => (text, false),
    };
    if name.contains('@') {
        return Ok(if escaped {
            Item::Final(Target::Address(name.to_string()))
        } else {
            Item::Address(name.to_string())
        });
    }
    if name.is_empty() {
        return Err("empty target".to_string());
    }
    if !quoted && name.contains(char::is_whitespace) {
        return Err(format!(
            "target '{name}' contains white space (separate targets with ',' or quote it)"
        ));
    }
    let name = name.to_lowercase();
    Ok(if escaped {
        Item::Final(Target::Local(name))
    } else {
        Item::Name(name)
    })
}

/// The state of one expansion: what it found so far and where it is.
#[derive(Default)]
struct Walk {
    targets: Vec<Target>,
    seen: HashSet<Target>,
    problems: Vec<String>,
    /// The aliases being expanded, outermost first.
    path: Vec<String>,
    /// The aliases already expanded completely: their targets are in `targets` already.
    done: HashSet<String>,
}

impl Walk {
    /// Adds the targets of `name`, an alias or a local user.
    fn visit(
        &mut self,
        aliases: &Aliases,
        name: &str,
        local_part: &dyn Fn(&str) -> Option<String>,
    ) {
        let Some(items) = aliases.map.get(name) else {
            return self.push(Target::Local(name.to_string()));
        };
        if self.path.last().is_some_and(|parent| parent == name) {
            return self.push(Target::Local(name.to_string()));
        }
        if self.path.iter().any(|outer| outer == name) {
            let problem = format!("alias loop: {} -> {name}", self.path.join(" -> "));
            return self.problems.push(problem);
        }
        if self.done.contains(name) {
            return;
        }
        if self.path.len() == MAX_EXPANSION_DEPTH {
            let problem =
                format!("alias '{name}' is nested deeper than {MAX_EXPANSION_DEPTH} aliases");
            return self.problems.push(problem);
        }
        self.path.push(name.to_string());
        for item in items {
            match item {
                Item::Name(next) => self.visit(aliases, next, local_part),
                Item::Address(address) => match local_part(address) {
                    Some(local) => self.visit(aliases, &local.to_lowercase(), local_part),
                    None => self.push(Target::Address(address.clone())),
                },
                Item::Final(target) => self.push(target.clone()),
            }
        }
        self.path.pop();
        self.done.insert(name.to_string());
    }

    /// Adds `target` unless it is there already.
    fn push(&mut self, target: Target) {
        if self.seen.insert(target.clone()) {
            self.targets.push(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// Writes `text` to `name` in `dir` and returns its full path as a string.
    fn file(dir: &TempDir, name: &str, text: &str) -> String {
        let path = dir.0.join(name);
        fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn parse(text: &str) -> Aliases {
        Aliases::parse(text, "/etc/aliases").unwrap_or_else(|error| panic!("{error}"))
    }

    fn error(text: &str) -> String {
        Aliases::parse(text, "/etc/aliases")
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    fn local(name: &str) -> Target {
        Target::Local(name.to_string())
    }

    /// The targets of `name`, asserting that the expansion met no problems.
    fn targets(aliases: &Aliases, name: &str) -> Vec<Target> {
        let expansion = aliases.expand(name);
        assert_eq!(expansion.problems, Vec::<String>::new(), "expanding {name}");
        expansion.targets
    }

    #[test]
    fn simple_and_multi_target_entries() {
        let aliases = parse("postmaster: root\nstaff: alice, bob,carol\n");
        assert_eq!(targets(&aliases, "postmaster"), [local("root")]);
        assert_eq!(
            targets(&aliases, "staff"),
            [local("alice"), local("bob"), local("carol")]
        );
    }

    #[test]
    fn continuation_lines_join_the_entry_and_a_blank_line_ends_it() {
        let aliases =
            parse("staff: alice,\n  bob,\n\tcarol\n# a comment inside\n   , dave\nother: eve\n");
        assert_eq!(
            targets(&aliases, "staff"),
            [local("alice"), local("bob"), local("carol"), local("dave")]
        );
        assert_eq!(
            error("staff: alice\n\n  bob\n"),
            "/etc/aliases:3: continuation line without an alias before it"
        );
        assert_eq!(
            error("  bob\n"),
            "/etc/aliases:1: continuation line without an alias before it"
        );
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let aliases = parse("# header\n\n   # indented comment\npostmaster: root\n\n\n");
        assert!(aliases.contains("postmaster"));
        assert_eq!(aliases.map.len(), 1);
    }

    #[test]
    fn names_and_local_targets_are_case_folded() {
        let aliases = parse("PostMaster: Root, Alice@Example.ORG\n");
        assert!(aliases.contains("postmaster") && aliases.contains("POSTMASTER"));
        let expected = [
            local("root"),
            Target::Address("Alice@Example.ORG".to_string()),
        ];
        assert_eq!(targets(&aliases, "POSTMASTER"), expected);
    }

    #[test]
    fn quoted_names_and_targets_keep_spaces_and_commas() {
        let aliases = parse(concat!(
            "\"name with space\": \"|/usr/bin/prog a, b\", \"/var/log/x y\"\n",
            "quoted: \"|/bin/echo \\\"hi\\\"\", \"john smith\"@example.org, \"Some User\"\n",
        ));
        let expected = [
            Target::Command("/usr/bin/prog a, b".to_string()),
            Target::File("/var/log/x y".to_string()),
        ];
        assert_eq!(targets(&aliases, "Name With Space"), expected);
        let expected = [
            Target::Command("/bin/echo \"hi\"".to_string()),
            Target::Address("\"john smith\"@example.org".to_string()),
            local("some user"),
        ];
        assert_eq!(targets(&aliases, "quoted"), expected);
    }

    #[test]
    fn commands_files_and_addresses_are_recognised() {
        let aliases = parse("list: |/usr/bin/procmail, /var/spool/list, bob@example.org, alice\n");
        let expected = [
            Target::Command("/usr/bin/procmail".to_string()),
            Target::File("/var/spool/list".to_string()),
            Target::Address("bob@example.org".to_string()),
            local("alice"),
        ];
        assert_eq!(targets(&aliases, "list"), expected);
    }

    #[test]
    fn an_escaped_user_is_not_expanded_further() {
        let aliases =
            parse("alice: \\Alice, alice@example.org\nbob: alice\nvacation: \\bob@example.org\n");
        let expected = [
            local("alice"),
            Target::Address("alice@example.org".to_string()),
        ];
        assert_eq!(targets(&aliases, "bob"), expected);
        assert_eq!(
            targets(&aliases, "vacation"),
            [Target::Address("bob@example.org".to_string())]
        );
    }

    #[test]
    fn include_files_are_read_with_their_comments_and_line_breaks() {
        let dir = TempDir::new("aliases");
        let nested = file(&dir, "nested", "dave\n");
        let list = file(
            &dir,
            "list",
            &format!("# members\nalice, bob\n\ncarol\n:INCLUDE: {nested}\n"),
        );
        let aliases = parse(&format!("staff: :include:{list}, \"|/usr/bin/archive\"\n"));
        let expected = [
            local("alice"),
            local("bob"),
            local("carol"),
            local("dave"),
            Target::Command("/usr/bin/archive".to_string()),
        ];
        assert_eq!(targets(&aliases, "staff"), expected);
    }

    #[test]
    fn include_errors_name_the_line_and_the_include_path() {
        let dir = TempDir::new("aliases");
        let missing = dir.0.join("missing").display().to_string();
        let message = error(&format!("root: bob\nstaff: :include:{missing}\n"));
        assert!(
            message.starts_with(&format!("/etc/aliases:2: cannot read :include:{missing}: ")),
            "{message}"
        );

        let bad = file(&dir, "bad", "alice\n\"bob\n");
        assert_eq!(
            error(&format!("staff: :include:{bad}\n")),
            format!("/etc/aliases:1: in {bad}:2: unterminated quote")
        );

        let looping = dir.0.join("loop").display().to_string();
        file(&dir, "loop", &format!(":include:{looping}\n"));
        let expected = format!(
            "/etc/aliases:1: in {looping}:1: :include:{looping} includes itself (an include loop)"
        );
        assert_eq!(error(&format!("staff: :include:{looping}\n")), expected);

        for depth in 0..=MAX_INCLUDE_DEPTH {
            file(
                &dir,
                &format!("deep{depth}"),
                &format!(
                    ":include:{}\n",
                    dir.0.join(format!("deep{}", depth + 1)).display()
                ),
            );
        }
        let message = error(&format!(
            "staff: :include:{}\n",
            dir.0.join("deep0").display()
        ));
        assert!(
            message.ends_with(&format!("nests includes deeper than {MAX_INCLUDE_DEPTH}")),
            "{message}"
        );

        assert_eq!(
            error("staff: :include:\n"),
            "/etc/aliases:1: :include: without a file name"
        );
    }

    #[test]
    fn the_same_file_may_be_included_twice_side_by_side() {
        let dir = TempDir::new("aliases");
        let list = file(&dir, "list", "alice\n");
        let aliases = parse(&format!("staff: :include:{list}, :include:{list}\n"));
        assert_eq!(targets(&aliases, "staff"), [local("alice")]);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let cases = [
            (
                "root: bob\nstaff alice\n",
                "/etc/aliases:2: missing ':' after the alias name",
            ),
            (
                "\"staff\" alice\n",
                "/etc/aliases:1: missing ':' after the alias name",
            ),
            (
                "\"staff: alice\n",
                "/etc/aliases:1: unterminated quote in the alias name",
            ),
            (": alice\n", "/etc/aliases:1: empty alias name"),
            ("\"\": alice\n", "/etc/aliases:1: empty alias name"),
            (
                "staff list: alice\n",
                "/etc/aliases:1: alias name 'staff list' contains white space (quote it)",
            ),
            (
                "root@example.org: bob\n",
                "/etc/aliases:1: alias name 'root@example.org' contains '@' (alias names are local parts)",
            ),
            (
                "a: b\n\n\n\nstaff:\n",
                "/etc/aliases:5: alias 'staff' has no targets",
            ),
            (
                "staff: , ,\n",
                "/etc/aliases:1: alias 'staff' has no targets",
            ),
            (
                "staff: alice,\n  \"bob\n",
                "/etc/aliases:1: unterminated quote",
            ),
            (
                "staff: alice bob\n",
                "/etc/aliases:1: target 'alice bob' contains white space (separate targets with ',' or quote it)",
            ),
            ("staff: |\n", "/etc/aliases:1: empty command after '|'"),
            ("staff: \"\"\n", "/etc/aliases:1: empty target"),
            ("staff: \\\n", "/etc/aliases:1: empty target"),
            (
                "root: bob\nRoot: alice\n",
                "/etc/aliases:2: alias 'root' is already defined on line 1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "{text:?}");
        }
    }

    #[test]
    fn an_unreadable_aliases_file_is_named() {
        let dir = TempDir::new("aliases");
        let path = dir.0.join("aliases");
        let message = Aliases::load(&path).map(|_| ()).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read: ", path.display())),
            "{message}"
        );
        fs::write(&path, "root: alice\n").unwrap();
        assert_eq!(
            targets(&Aliases::load(&path).unwrap(), "root"),
            [local("alice")]
        );
    }

    #[test]
    fn nested_aliases_expand_to_their_final_targets() {
        let aliases =
            parse("all: staff, ops\nstaff: alice, bob\nops: carol, pager\npager: |/usr/bin/page\n");
        let expected = [
            local("alice"),
            local("bob"),
            local("carol"),
            Target::Command("/usr/bin/page".to_string()),
        ];
        assert_eq!(targets(&aliases, "all"), expected);
    }

    #[test]
    fn a_loop_terminates_and_is_reported() {
        let aliases = parse("a: b\nb: a, carol\n");
        let expansion = aliases.expand("a");
        assert_eq!(expansion.targets, [local("carol")]);
        assert_eq!(expansion.problems, ["alias loop: a -> b -> a"]);
        let expansion = parse("a: b\nb: a\n").expand("b");
        assert_eq!(expansion.targets, []);
        assert_eq!(expansion.problems, ["alias loop: b -> a -> b"]);
    }

    #[test]
    fn an_alias_naming_itself_delivers_to_the_user() {
        let aliases = parse("root: root, bob\npostmaster: root\n");
        assert_eq!(targets(&aliases, "root"), [local("root"), local("bob")]);
        assert_eq!(
            targets(&aliases, "postmaster"),
            [local("root"), local("bob")]
        );
    }

    #[test]
    fn duplicates_are_removed_in_first_occurrence_order() {
        let aliases =
            parse("all: bob, team, alice, bob\nteam: alice, carol, bob\nother: team, team\n");
        assert_eq!(
            targets(&aliases, "all"),
            [local("bob"), local("alice"), local("carol")]
        );
        assert_eq!(
            targets(&aliases, "other"),
            [local("alice"), local("carol"), local("bob")]
        );
    }

    #[test]
    fn unknown_names_expand_to_themselves() {
        let aliases = parse("root: alice\n");
        assert!(!aliases.contains("Bob"));
        assert_eq!(targets(&aliases, "Bob"), [local("bob")]);
        assert_eq!(targets(&Aliases::empty(), "root"), [local("root")]);
    }

    #[test]
    fn expansion_depth_is_bounded() {
        let chain: String = (0..MAX_EXPANSION_DEPTH + 5)
            .map(|n| format!("a{n}: u{n}, a{}\n", n + 1))
            .collect();
        let expansion = parse(&chain).expand("a0");
        let expected: Vec<Target> = (0..MAX_EXPANSION_DEPTH)
            .map(|n| local(&format!("u{n}")))
            .collect();
        assert_eq!(expansion.targets, expected);
        assert_eq!(
            expansion.problems,
            [format!(
                "alias 'a{MAX_EXPANSION_DEPTH}' is nested deeper than 20 aliases"
            )]
        );
    }

    #[test]
    fn a_typical_debian_aliases_file() {
        let aliases = parse(concat!(
            "# /etc/aliases\n",
            "mailer-daemon: postmaster\n",
            "postmaster: root\n",
            "nobody: root\n",
            "hostmaster: root\n",
            "usenet: root\n",
            "news: root\n",
            "webmaster: root\n",
            "www: root\n",
            "ftp: root\n",
            "abuse: root\n",
            "noc: root\n",
            "security: root\n",
            "root: alice\n",
        ));
        for name in ["MAILER-DAEMON", "postmaster", "nobody", "security", "root"] {
            assert_eq!(targets(&aliases, name), [local("alice")], "{name}");
        }
        assert_eq!(targets(&aliases, "alice"), [local("alice")]);
    }
}
