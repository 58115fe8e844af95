// SPDX-License-Identifier: MIT
pragma solidity 0.8.26;

/// @title TestFalseToken
/// @notice A test token whose `transfer` returns `false` instead of
///         reverting when the sender holds too little (as many ERC20s of
///         the OpenZeppelin 2 era do): the transaction succeeds (receipt
///         status 1), nothing moves and no Transfer is logged. A payment
///         gateway that reads only the receipt status reports a payout that
///         never happened.
/// @dev    Anyone may mint, and `seize` moves anyone's tokens: this contract
///         only ever runs on local dev chains, where tests use it to empty a
///         wallet between the gateway's balance check and its transfer.
contract TestFalseToken {
    string public constant name = "False Token (test)";
    string public constant symbol = "FALSE";
    uint8 public constant decimals = 6;

    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;

    event Transfer(address indexed from, address indexed to, uint256 value);

    function mint(address to, uint256 value) external {
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function seize(address from, address to, uint256 value) external {
        require(balanceOf[from] >= value, "balance");
        balanceOf[from] -= value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        if (to == address(0) || balanceOf[msg.sender] < value) {
            return false;
        }
        balanceOf[msg.sender] -= value;
        balanceOf[to] += value;
        emit Transfer(msg.sender, to, value);
        return true;
    }
}
