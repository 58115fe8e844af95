//! The console in English and Chinese: the reader's language is the
//! `lang` cookie (set by `?lang=`), else the browser's `Accept-Language`.
//! Every text is a key of [`TEXTS`]; placeholders `{0}`, `{1}` … take
//! values, which the caller escapes.

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// From a code (`en`, `zh`, `zh-CN` …).
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim().to_ascii_lowercase();
        if code.starts_with("zh") {
            Some(Lang::Zh)
        } else if code.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// From `Accept-Language`: the first language it names that the
    /// console has, else English.
    pub fn from_accept(header: &str) -> Self {
        header
            .split(',')
            .filter_map(|part| Lang::parse(part.split(';').next().unwrap_or("")))
            .next()
            .unwrap_or(Lang::En)
    }

    /// Its code (`en`, `zh-CN`).
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The other language (the switch offers it).
    pub fn other(self) -> Self {
        match self {
            Lang::En => Lang::Zh,
            Lang::Zh => Lang::En,
        }
    }

    /// Its name in itself.
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Zh => "中文",
        }
    }

    /// The text of `key` (`??` when missing, so a gap shows).
    pub fn t(self, key: &str) -> &'static str {
        match TEXTS.iter().find(|(k, ..)| *k == key) {
            Some((_, en, zh)) => match self {
                Lang::En => en,
                Lang::Zh => zh,
            },
            None => "??",
        }
    }

    /// The text of `key` with `{0}`, `{1}` … replaced by `args`.
    pub fn tf(self, key: &str, args: &[&str]) -> String {
        let mut out = self.t(key).to_owned();
        for (i, a) in args.iter().enumerate() {
            out = out.replace(&format!("{{{i}}}"), a);
        }
        out
    }
}

/// Key, English, Chinese.
pub const TEXTS: &[(&str, &str, &str)] = &[
    ("nav.overview", "Overview", "概览"),
    ("nav.payouts", "Payouts", "出款"),
    ("nav.deposits", "Deposits", "充值"),
    ("nav.wallets", "Wallets", "钱包"),
    ("nav.requests", "Requests", "请求"),
    ("logout", "Log out", "退出"),
    ("login.title", "Operator console", "运维控制台"),
    ("login.token", "Console token", "控制台令牌"),
    ("login.submit", "Log in", "登录"),
    ("login.wrong", "That token is not right.", "令牌不正确。"),
    (
        "login.origin",
        "Log in from the console's own page.",
        "请从控制台自己的页面登录。",
    ),
    ("any", "any", "全部"),
    ("filter", "Filter", "筛选"),
    ("search", "Search", "搜索"),
    ("older", "Older →", "更早 →"),
    ("none", "Nothing here.", "暂无记录。"),
    (
        "scanned",
        "Looked at ids {0} to {1}.",
        "已查看编号 {0} 至 {1}。",
    ),
    ("problems", "Problems", "问题"),
    ("warnings", "Warnings", "警告"),
    (
        "healthy",
        "Healthy: nothing needs you.",
        "运行正常：无需处理。",
    ),
    ("role", "Role", "角色"),
    ("role.active", "active (term {0})", "主实例（任期 {0}）"),
    (
        "role.standby",
        "standby; active: {0} (term {1})",
        "备用；主实例：{0}（任期 {1}）",
    ),
    ("broker", "Broker", "消息队列"),
    ("connected", "connected", "已连接"),
    ("disconnected", "not connected", "未连接"),
    (
        "no_broker",
        "none: requests over the HTTP API only",
        "无：请求只经 HTTP API",
    ),
    ("networks", "Networks", "网络"),
    ("network", "Network", "网络"),
    ("node", "Node", "节点"),
    ("head", "Head", "最新区块"),
    ("cursor", "Cursor", "已处理区块"),
    ("lag", "Lag", "落后"),
    ("last_block", "Last new head", "最近新区块"),
    ("seconds_ago", "{0} s ago", "{0} 秒前"),
    ("stalled", "stalled", "停滞"),
    ("moving", "moving", "正常"),
    ("backlogs", "Backlogs", "积压"),
    (
        "outbox",
        "Answers not yet confirmed by the broker",
        "未被消息队列确认的应答",
    ),
    ("outbox_oldest", "Oldest of them", "其中最早"),
    (
        "ledger",
        "Movements not yet in the wallet ledger",
        "尚未记入钱包账本的变动",
    ),
    (
        "webhooks",
        "Webhook deliveries pending / dead",
        "待投递 / 失败的 Webhook",
    ),
    ("payouts_by_state", "Payouts by state", "按状态统计的出款"),
    ("deposits_by_state", "Deposits by state", "按状态统计的充值"),
    ("requests_since", "Requests since start", "启动以来的请求"),
    ("id", "Id", "编号"),
    ("state", "State", "状态"),
    ("kind", "Kind", "类型"),
    ("queue_id", "queue_id", "queue_id"),
    ("order_id", "order_id", "order_id"),
    ("from", "From", "付款方"),
    ("to", "To", "收款方"),
    ("payer", "Paid by", "实际付款钱包"),
    ("amount", "Amount", "金额"),
    ("symbol", "Symbol", "币种"),
    ("wallet", "Wallet", "钱包"),
    ("created", "Created", "创建时间"),
    ("updated", "Updated", "更新时间"),
    ("tx", "Transaction", "交易"),
    ("block", "Block", "区块"),
    ("nonce", "Nonce", "Nonce"),
    ("fee", "Fee paid", "手续费"),
    ("error", "Error", "错误"),
    (
        "search.payouts",
        "queue_id, order_id, address or tx hash",
        "queue_id、order_id、地址或交易哈希",
    ),
    ("search.deposits", "address or tx hash", "地址或交易哈希"),
    ("payout", "Payout {0}", "出款 {0}"),
    ("why_stuck", "Why it waits", "等待原因"),
    ("answers", "Answers sent", "已发送的应答"),
    (
        "transactions",
        "Transactions signed for it",
        "为其签名的交易",
    ),
    ("gas_limit", "Gas limit", "Gas 上限"),
    ("max_fee", "Max fee / gas (wei)", "最高单价（wei）"),
    ("priority_fee", "Priority fee (wei)", "优先费（wei）"),
    ("signed_at", "Signed and broadcast", "签名并广播"),
    ("mined_at", "Mined", "上链"),
    ("cancels", "cancels the payout", "取消该出款"),
    ("not_found", "Not found.", "未找到。"),
    ("address", "Address", "地址"),
    ("class", "Class", "类别"),
    ("class.user", "hot wallet", "热钱包"),
    ("class.collection", "collection", "归集钱包"),
    ("on_chain", "On chain", "链上余额"),
    ("ledger_balance", "Ledger", "账本余额"),
    ("next_nonce", "Next nonce", "下一个 Nonce"),
    ("waiting", "Payouts waiting", "等待中的出款"),
    ("low", "low: {0} below {1}", "偏低：{0}，低于 {1}"),
    (
        "balances_read",
        "Balances read from the node {0}.",
        "余额读取自节点，时间 {0}。",
    ),
    (
        "balances_unread",
        "Balances not read yet.",
        "尚未读取余额。",
    ),
    (
        "balances_error",
        "The last read failed: {0}",
        "上次读取失败：{0}",
    ),
    ("outcome", "Outcome", "结果"),
    ("received", "Received", "收到时间"),
    ("request", "Request", "请求"),
    (
        "dead_letters",
        "Dead letters (requests that could not be answered)",
        "死信（无法应答的请求）",
    ),
    ("reason", "Reason", "原因"),
    ("published", "Published", "已发布"),
    (
        "stuck.queued",
        "Waiting for its wallet's nonce actor since {0}.",
        "自 {0} 起等待钱包的 Nonce 处理。",
    ),
    ("stuck.error", "Last word: {0}", "最近信息：{0}"),
    (
        "stuck.refused",
        "The node refuses its transaction since {0}: {1}",
        "节点自 {0} 起拒绝其交易：{1}",
    ),
    (
        "stuck.unmined",
        "Sent {0} and not mined yet; after {1} s it is replaced with higher fees.",
        "已于 {0} 发出但尚未上链；{1} 秒后将以更高手续费替换。",
    ),
    (
        "stuck.cancel",
        "A remove asked to cancel it: its nonce goes to a zero-value transfer.",
        "已收到取消请求：其 Nonce 将用于一笔零值转账。",
    ),
    (
        "stuck.mined",
        "Mined in block {0}; final at block {1} (cursor {2}).",
        "已在区块 {0} 上链；区块 {1} 时最终确认（当前 {2}）。",
    ),
    (
        "stuck.signed",
        "Signed {0}; waiting for the node to accept it.",
        "已于 {0} 签名；等待节点接收。",
    ),
    ("final", "Final.", "已最终确定。"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_once_and_both_languages_filled() {
        let mut keys: Vec<&str> = TEXTS.iter().map(|(k, ..)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key appears twice");
        for (k, en, zh) in TEXTS {
            assert!(!en.is_empty() && !zh.is_empty(), "{k}");
            for i in 0..4 {
                let p = format!("{{{i}}}");
                assert_eq!(en.contains(&p), zh.contains(&p), "{k}: placeholders differ");
            }
        }
        assert_eq!(Lang::Zh.t("nav.payouts"), "出款");
        assert_eq!(Lang::En.t("no such key"), "??");
        assert_eq!(Lang::En.tf("scanned", &["1", "9"]), "Looked at ids 1 to 9.");
    }

    #[test]
    fn the_browser_language_picks_chinese_or_english() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept("fr-FR,en;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept("de"), Lang::En);
        assert_eq!(Lang::parse("ZH-tw"), Some(Lang::Zh));
    }
}
